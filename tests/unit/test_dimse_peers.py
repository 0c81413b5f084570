"""dimse.* / forward.* settings and the peer table: who may associate, from where, to do what."""
from __future__ import annotations

import json

import pytest

from gateway.config import SettingsError, load_settings
from plugins.forwarding import rules_from_settings
from gateway.dimse.peers import Destination, Peer, PeerTable


def _settings(**overrides):
    return load_settings(overrides=overrides, environ={})


# --- settings ----------------------------------------------------------------------------------

def test_defaults():
    settings = _settings()
    assert settings["dimse.enabled"] is True
    assert settings["dimse.port"] == 11112
    assert settings["dimse.max_pdu_size"] == 0  # unlimited
    assert settings["dimse.peers"] == [] and settings["dimse.destinations"] == []
    assert settings["forward.rules"] == []


def test_peers_from_toml_tables(tmp_path):
    path = tmp_path / "gateway.toml"
    path.write_text("""
[dimse]
ae_title = "DENTALGW"

[[dimse.peers]]
ae_title = "CBCT_ROOM1"
host = "192.168.10.21"
clinic = "north"
allow = ["echo", "store"]

[[dimse.peers]]
ae_title = "PACS"

[[dimse.destinations]]
ae_title = "PACS"
host = "10.1.2.3"
port = 104

[[forward.rules]]
to = ["PACS"]
modalities = ["ct", "PX"]
""")
    settings = load_settings(config_file=path, environ={})
    assert settings["dimse.peers"] == [
        {"ae_title": "CBCT_ROOM1", "hosts": ["192.168.10.21"], "clinic": "north", "allow": ["echo", "store"]},
        {"ae_title": "PACS", "hosts": [], "clinic": "default", "allow": ["echo", "store", "find", "move", "get"]},
    ]
    assert settings["dimse.destinations"] == [{"ae_title": "PACS", "host": "10.1.2.3", "port": 104}]
    assert settings["forward.rules"] == [{"name": "rule1", "to": ["PACS"], "clinic": "", "modalities": ["CT", "PX"],
                                          "sop_classes": []}]
    (rule,) = rules_from_settings(settings)
    assert rule.to == ("PACS",) and rule.modalities == {"CT", "PX"}


def test_peers_from_environment_json():
    peers = [{"ae_title": "*", "hosts": ["127.0.0.1"], "allow": ["all"]}]
    settings = load_settings(environ={"GATEWAY_DIMSE__PEERS": json.dumps(peers)})
    assert settings["dimse.peers"][0]["allow"] == ["echo", "store", "find", "move", "get"]
    assert settings.sources["dimse.peers"] == "environment"


def test_normalised_tables_convert_to_themselves():
    settings = _settings(**{"dimse.peers": [{"ae_title": "A", "allow": "find,get"}],
                            "dimse.destinations": [{"ae_title": "B", "host": "h", "port": "104"}]})
    from gateway.config import SETTINGS

    by_name = {s.name: s for s in SETTINGS}
    for name in ("dimse.peers", "dimse.destinations", "forward.rules"):
        assert by_name[name].convert(settings[name]) == settings[name]


@pytest.mark.parametrize("name, value, message", [
    ("dimse.peers", [{"host": "x"}], "peer 1: 'ae_title' is required"),
    ("dimse.peers", [{"ae_title": "A", "allow": ["store", "delete"]}], "unknown service 'delete'"),
    ("dimse.peers", [{"ae_title": "A", "colour": "red"}], "unknown key 'colour'"),
    ("dimse.peers", [{"ae_title": "WAY_TOO_LONG_AE_TITLE"}], "is not an AE title"),
    ("dimse.peers", "[not json", "expected a JSON list of peers"),
    ("dimse.peers", [{"ae_title": "A", "clinic": " "}], "clinic must not be empty"),
    ("dimse.destinations", [{"ae_title": "D", "host": "h"}], "'port' is required"),
    ("dimse.destinations", [{"ae_title": "D", "host": "h", "port": 70000}], "expected a TCP port"),
    ("dimse.destinations", [{"ae_title": "A\\B", "host": "h", "port": 1}], "is not an AE title"),
    ("dimse.destinations", [{"ae_title": "D", "host": "h", "port": 1}, {"ae_title": "D", "host": "i", "port": 2}],
     "declared twice"),
    ("forward.rules", [{"name": "x"}], "'to' is required"),
    ("forward.rules", [{"to": []}], "names no destination"),
    ("dimse.port", 0, "expected a TCP port"),
    ("dimse.max_pdu_size", -1, "expected zero or a positive number"),
])
def test_invalid_tables_name_the_entry(name, value, message):
    with pytest.raises(SettingsError) as info:
        _settings(**{name: value})
    assert name in str(info.value) and message in str(info.value)


def test_rule_to_an_undeclared_destination_is_a_settings_error():
    settings = _settings(**{"forward.rules": [{"name": "r", "to": ["NOWHERE"]}]})
    with pytest.raises(SettingsError, match="'NOWHERE', which is not declared in dimse.destinations"):
        rules_from_settings(settings)


# --- the peer table ----------------------------------------------------------------------------

@pytest.fixture
def table():
    return PeerTable([
        Peer("CBCT", ("10.0.0.5",), "north", frozenset({"echo", "store"})),
        Peer("CBCT", ("10.0.0.6",), "south", frozenset({"store"})),
        Peer("LOCAL", ("localhost",)),
        Peer("*", ("127.0.0.9",), "any", frozenset({"echo"})),
    ], [Destination("PACS", "10.1.2.3", 104)])


def test_match_by_ae_title_and_address(table):
    assert table.match("CBCT", "10.0.0.5").clinic == "north"
    assert table.match("CBCT  ", "10.0.0.6").clinic == "south"  # AE titles are space padded
    assert table.match("CBCT", "::ffff:10.0.0.5").clinic == "north"  # IPv4-mapped IPv6
    assert table.match("CBCT", "10.0.0.7") is None
    assert table.match("OTHER", "10.0.0.5") is None


def test_host_names_are_resolved(table):
    assert table.match("LOCAL", "127.0.0.1") is not None


def test_wildcard_ae_title(table):
    peer = table.match("ANYTHING", "127.0.0.9")
    assert peer.clinic == "any" and peer.allows("echo") and not peer.allows("store")


def test_why_rejected_explains(table):
    assert "not for address 10.0.0.9" in table.why_rejected("CBCT", "10.0.0.9")
    assert "is not declared in dimse.peers" in table.why_rejected("NOBODY", "10.0.0.9")
    assert "no peer is declared" in PeerTable().why_rejected("X", "1.2.3.4")


def test_principal_carries_the_peer_clinic(table):
    principal = table.match("CBCT", "10.0.0.5").principal("CBCT")
    assert principal.clinic_id == "north"
    assert principal.user_id == "dimse:CBCT"


def test_destinations(table):
    assert table.destination("PACS") == Destination("PACS", "10.1.2.3", 104)
    assert table.destination("PACS ") == Destination("PACS", "10.1.2.3", 104)
    assert table.destination("OTHER") is None


def test_from_settings():
    settings = _settings(**{"dimse.peers": [{"ae_title": "A", "hosts": ["1.2.3.4"], "allow": ["find"]}],
                            "dimse.destinations": [{"ae_title": "B", "host": "h", "port": 11112}]})
    table = PeerTable.from_settings(settings)
    assert table.match("A", "1.2.3.4") == Peer("A", ("1.2.3.4",), "default", frozenset({"find"}))
    assert table.destination("B").port == 11112
