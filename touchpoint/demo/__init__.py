"""The whole loop in one command: the private stack, a scripted driver, the stories."""
