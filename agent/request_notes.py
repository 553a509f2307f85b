"""What a card says about the request the driver made from it, in both locales.

A request ends where the driver sees it: while it waits, the card says so (and shows
"pending"); if no answer comes within ``request_timeout_s``, the card says the dealer or
the partner could not be reached and that tapping the action again retries it. An answer
that comes later is still taken.
"""

from __future__ import annotations

from typing import Final

from agent.cards import Text

WAITING_FOR_DEALER: Final = Text("正在联系经销商……", "Waiting for the dealer…")
DEALER_UNREACHABLE: Final = Text(
    "暂时联系不上经销商。请再点一次预约重试。",
    "Couldn't reach the dealer. Tap Book again to retry.",
)
WAITING_FOR_PARTNER: Final = Text("正在联系合作商户……", "Waiting for the partner…")
PARTNER_UNREACHABLE: Final = Text(
    "暂时联系不上合作商户。请再点一次领取重试。",
    "Couldn't reach the partner. Tap Redeem again to retry.",
)
REDEMPTION_REFUSED: Final = Text("暂时无法领取，请稍后再试。", "Could not redeem right now.")
REDEEMED_TITLE: Final = Text("已领取", "Redeemed")
#: ``{code}``: the voucher code from the cloud's answer (a private property: read by a
#: method call, never in a broadcast).
REDEEMED_BODY: Final = Text("请向商户出示：{code}", "Show this to the partner: {code}")
REDEEMED_NO_CODE: Final = Text("已领取，请在商户处使用。", "Redeemed: use it at the partner.")
OK_LABEL: Final = Text("知道了", "OK")
