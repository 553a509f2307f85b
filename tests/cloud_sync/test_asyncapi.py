"""The AsyncAPI document: current, complete, structurally valid, with examples that work.

The document is generated (``python -m touchpoint.docgen.asyncapi``); these tests keep the
checked-in copy from drifting, check it describes every channel and payload model of
the contract and nothing else, that it has what AsyncAPI 3.0.0 requires and every
``$ref`` resolves, and that each example is accepted by the models, the event catalogue
and the car's own downlink gate.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest
import yaml
from pydantic import BaseModel

from agent.event_catalogue import CATALOGUE
from cloud_sync import contract
from cloud_sync.contract import (
    CHANNELS,
    CONFIG_KINDS,
    DOCUMENT_BODIES,
    DocumentHeader,
    DocumentKind,
    RequestName,
    SignedDocument,
    Topics,
)
from cloud_sync.downlink import Accepted, DownlinkGate
from cloud_sync.signing import Verifier
from touchpoint.docgen import asyncapi

DOCUMENT: Final = Path("docs") / "asyncapi.yaml"
_OBJECTS: Final = ("servers", "channels", "operations", "components")


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    loaded = yaml.safe_load(asyncapi.render())
    assert isinstance(loaded, dict)
    return loaded


def resolve(doc: dict[str, Any], ref: str) -> Any:
    """The object a local ``$ref`` points at (JSON Pointer, RFC 6901)."""
    assert ref.startswith("#/"), f"not a local reference: {ref}"
    node: Any = doc
    for token in ref[2:].split("/"):
        key = token.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict), f"{ref}: {key} is inside a non-object"
        assert key in node, f"{ref}: no {key}"
        node = node[key]
    return node


def deref(doc: dict[str, Any], node: Any) -> Any:
    """``node``, or what its chain of ``$ref`` s finally points at."""
    while isinstance(node, dict) and "$ref" in node:
        node = resolve(doc, node["$ref"])
    return node


def payload_model(doc: dict[str, Any], message: dict[str, Any]) -> type[BaseModel]:
    """The contract model a message's payload is (directly, or the first of an allOf)."""
    payload = message["payload"]
    ref = payload.get("$ref") or payload["allOf"][0]["$ref"]
    resolve(doc, ref)
    name = ref.removeprefix(asyncapi.SCHEMAS)
    model = getattr(contract, name, None)
    assert isinstance(model, type)
    assert issubclass(model, BaseModel), f"{name} is no model of the contract"
    return model


def contract_models() -> set[type[BaseModel]]:
    """Every pydantic model class defined in cloud_sync/contract.py."""
    return {
        value
        for value in vars(contract).values()
        if isinstance(value, type)
        and issubclass(value, BaseModel)
        and value.__module__ == contract.__name__
        and not value.__name__.startswith("_")
    }


def messages(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    yield from doc["components"]["messages"].items()


def reachable_schemas(doc: dict[str, Any], roots: list[str]) -> set[str]:
    """The component schemas reachable by ``$ref`` from the given refs."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        ref = todo.pop()
        if not ref.startswith(asyncapi.SCHEMAS) or ref in seen:
            continue
        seen.add(ref)
        todo.extend(asyncapi.iter_refs(resolve(doc, ref)))
    return {r.removeprefix(asyncapi.SCHEMAS) for r in seen}


# -- the checked-in file ------------------------------------------------------------------


def test_the_checked_in_document_is_current(repo_root: Path) -> None:
    checked_in = (repo_root / DOCUMENT).read_text("utf-8")
    assert checked_in == asyncapi.render(), (
        "docs/asyncapi.yaml is stale: run `python -m touchpoint.docgen.asyncapi` and commit it"
    )


def test_the_command_writes_and_checks(tmp_path: Path) -> None:
    out = tmp_path / "docs" / "asyncapi.yaml"
    assert asyncapi.main(["--check", str(out)]) == 1  # missing
    assert asyncapi.main([str(out)]) == 0
    assert out.read_text("utf-8") == asyncapi.render()
    assert asyncapi.main(["--check", str(out)]) == 0
    out.write_text(out.read_text("utf-8") + "# edited\n", "utf-8")
    assert asyncapi.main(["--check", str(out)]) == 1


# -- structure ----------------------------------------------------------------------------


def test_it_has_what_asyncapi_3_requires(doc: dict[str, Any]) -> None:
    assert doc["asyncapi"] == "3.0.0"
    assert {"title", "version", "description"} <= set(doc["info"])
    assert "car's" in doc["info"]["description"]  # whose point of view send/receive take
    for name in _OBJECTS:
        assert isinstance(doc[name], dict)
        assert doc[name]
    for server in doc["servers"].values():
        assert {"host", "protocol"} <= set(server)
        assert server["protocolVersion"] == "5"
        for variable in re.findall(r"{(\w+)}", server["host"]):
            assert variable in server["variables"]
        for scheme in server["security"]:
            assert resolve(doc, scheme["$ref"])["type"] == "X509"
    for channel in doc["channels"].values():
        assert {"address", "messages"} <= set(channel)
        for parameter in re.findall(r"{(\w+)}", channel["address"]):
            assert parameter in channel["parameters"], parameter
        assert set(channel["parameters"]) == set(re.findall(r"{(\w+)}", channel["address"]))
    for operation in doc["operations"].values():
        assert operation["action"] in ("send", "receive")
        channel = resolve(doc, operation["channel"]["$ref"])
        for message in operation["messages"]:
            # An operation's messages must be among its channel's.
            assert message["$ref"].startswith(operation["channel"]["$ref"] + "/messages/")
        reply = operation.get("reply")
        if reply is not None:
            for message in reply["messages"]:
                assert message["$ref"].startswith(reply["channel"]["$ref"] + "/messages/")
        assert channel
    for _, message in messages(doc):
        assert "payload" in message
        for example in message["examples"]:
            assert "payload" in example
    for correlation in doc["components"]["correlationIds"].values():
        assert re.match(r"^\$message\.(header|payload)#(/[^/]*)*$", correlation["location"])


def test_every_ref_resolves(doc: dict[str, Any]) -> None:
    refs = list(asyncapi.iter_refs(doc))
    assert len(refs) > 100
    for ref in refs:
        resolve(doc, ref)


def test_no_2020_12_keywords_leak_into_the_draft_07_schemas(doc: dict[str, Any]) -> None:
    text = json.dumps(doc["components"]["schemas"])
    assert '"prefixItems"' not in text
    assert '"$defs"' not in text


def test_the_correlation_id_points_at_a_field_requests_and_replies_have(
    doc: dict[str, Any],
) -> None:
    location = doc["components"]["correlationIds"][asyncapi.CORRELATION_ID]["location"]
    field = location.removeprefix("$message.payload#/")
    for mid in ("RequestEvent", "SlotsReply", "BookingReply", "RedemptionReply"):
        message = doc["components"]["messages"][mid]
        assert resolve(doc, message["correlationId"]["$ref"])["location"] == location
        assert "correlationData" in message["bindings"]["mqtt"]
        for example in message["examples"]:
            assert example["payload"][field]


# -- the contract, all of it and only it --------------------------------------------------


def test_every_channel_is_the_contracts(doc: dict[str, Any]) -> None:
    assert list(doc["channels"]) == [c.id for c in CHANNELS]
    for channel in CHANNELS:
        described = doc["channels"][channel.id]
        assert described["address"] == channel.address
        models = [payload_model(doc, deref(doc, m)) for m in described["messages"].values()]
        assert models == list(channel.messages)
        operation = doc["operations"][asyncapi.operation_id(channel)]
        assert operation["action"] == ("send" if channel.direction == "up" else "receive")
        assert operation["channel"]["$ref"] == f"#/channels/{channel.id}"
        binding = operation["bindings"]["mqtt"]
        assert (binding["qos"], binding["retain"]) == (channel.qos, channel.retain)
    assert len(doc["operations"]) == len(CHANNELS)


def test_every_payload_model_of_the_contract_is_described(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    message_refs = [
        m["payload"].get("$ref") or m["payload"]["allOf"][0]["$ref"] for _, m in messages(doc)
    ]
    reachable = reachable_schemas(doc, message_refs)
    # Signed documents: the header and each kind's body, through SignedDocument.signed.
    assert "SignedContent" in reachable
    for kind, body in DOCUMENT_BODIES.items():
        content = schemas[f"SignedContent.{kind.value}"]
        assert content["allOf"][0]["$ref"] == asyncapi.SCHEMAS + DocumentHeader.__name__
        assert content["allOf"][1]["properties"]["body"]["$ref"] == asyncapi.SCHEMAS + body.__name__
        assert body.__name__ in reachable
    undescribed = {m.__name__ for m in contract_models()} - reachable
    assert undescribed == set(), "models of the contract no channel or document carries"
    for model in asyncapi.payload_models():
        assert model.__name__ in schemas


def test_the_parameters_enumerate_the_contracts_names(doc: dict[str, Any]) -> None:
    parameters = doc["components"]["parameters"]
    assert parameters["name"]["enum"] == [n.value for n in RequestName]
    assert parameters["kind"]["enum"] == [k.value for k in CONFIG_KINDS]
    assert DocumentKind.CARD.value not in parameters["kind"]["enum"]  # cards has its topic
    assert re.fullmatch(contract.VEHICLE_ID, parameters["vehicle_id"]["examples"][0])


def test_the_request_operation_expects_the_reply_models(doc: dict[str, Any]) -> None:
    operation = doc["operations"]["sendRequests"]
    replies = [payload_model(doc, deref(doc, m)) for m in operation["reply"]["messages"]]
    assert set(replies) == set(contract.REPLIES.values())
    binding = resolve(doc, "#/components/messages/RequestEvent")["bindings"]["mqtt"]
    for name in RequestName:
        topic = Topics("car-0001").response(name)
        assert re.fullmatch(binding["responseTopic"]["pattern"], topic)


def test_every_event_type_has_a_payload_schema(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    for entry in CATALOGUE.values():
        schema = schemas[f"EventPayload.{entry.type}"]
        assert schema["x-priority"] == entry.priority.name
        assert schema["x-categories"] == [c.value for c in entry.categories]
        assert set(schema["properties"]) == {f.name for f in entry.fields}
        for example in schema["examples"]:
            assert entry.problems(example) == []
    table = doc["components"]["messages"]["EventBatch"]["description"]
    for event_type in CATALOGUE:
        assert f"| `{event_type}` |" in table


# -- examples -----------------------------------------------------------------------------


def test_every_message_has_examples_its_model_accepts(doc: dict[str, Any]) -> None:
    for mid, message in messages(doc):
        model = payload_model(doc, message)
        assert message["examples"], f"{mid} has no example"
        names = [e["name"] for e in message["examples"]]
        assert len(set(names)) == len(names)
        for example in message["examples"]:
            instance = model.model_validate(example["payload"])
            # What the generator wrote is what the model writes: nothing lost or renamed.
            assert instance.model_dump(mode="json", by_alias=True) == example["payload"]


def test_example_events_fit_the_catalogue(doc: dict[str, Any]) -> None:
    batch = doc["components"]["messages"]["EventBatch"]["examples"][0]["payload"]
    requests = [e["payload"] for e in doc["components"]["messages"]["RequestEvent"]["examples"]]
    for event in [*batch["events"], *requests]:
        entry = CATALOGUE[event["type"]]
        assert entry.problems(event["payload"]) == []
        assert event["category"] in [c.value for c in entry.categories]
    assert {r["type"] for r in requests} == {f"request.{n.value}" for n in RequestName}
    assert all(r["request_id"] for r in requests)
    # The replies answer the example requests.
    request_ids = {r["request_id"] for r in requests}
    for mid in ("SlotsReply", "BookingReply", "RedemptionReply"):
        for example in doc["components"]["messages"][mid]["examples"]:
            assert example["payload"]["request_id"] in request_ids


@pytest.mark.parametrize(
    ("mid", "channel"), [("ConfigDocument", "config"), ("CardDocument", "cards")]
)
def test_example_documents_pass_the_cars_downlink_gate(
    doc: dict[str, Any], mid: str, channel: str
) -> None:
    """Signed by the example key, for the example car: the car accepts them as they are."""
    verifier = Verifier({asyncapi.EXAMPLE_KEY_ID: asyncapi.example_key().public_base64()})
    assert asyncapi.example_key().public_base64() in doc["info"]["description"]
    examples = doc["components"]["messages"][mid]["examples"]
    vehicle = doc["components"]["parameters"]["vehicle_id"]["examples"][0]
    gate = DownlinkGate(vehicle, verifier)
    for example in examples:
        document = SignedDocument.model_validate(example["payload"])
        verifier.verify(document)
        header = DocumentHeader.model_validate_json(document.signed)
        DOCUMENT_BODIES[header.kind].model_validate(header.body)
        topics = Topics(vehicle)
        topic = topics.cards if channel == "cards" else topics.config(header.kind)
        payload = json.dumps(example["payload"], ensure_ascii=False).encode("utf-8")
        verdict = gate.check(topic, payload, {})
        assert isinstance(verdict, Accepted), verdict
        assert (channel == "cards") is (header.kind is DocumentKind.CARD)
    config_kinds = {
        DocumentHeader.model_validate_json(e["payload"]["signed"]).kind for e in examples
    }
    assert config_kinds <= (set(CONFIG_KINDS) if channel == "config" else {DocumentKind.CARD})


def test_signed_texts_survive_the_yaml_byte_for_byte(repo_root: Path) -> None:
    """A signed text in the file must be copyable as is (no folded lines)."""
    text = (repo_root / DOCUMENT).read_text("utf-8")
    for match in re.finditer(r"\n( +)signed: \|-\n\1  (\{.*)\n", text):
        json.loads(match.group(2))
    assert re.search(r"signed: '", text) is None
