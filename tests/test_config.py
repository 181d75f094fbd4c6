"""Settings declared once: defaults, bounds, unknown keys, the rendered default file."""

from pathlib import Path

import pytest

from gateway import config
from gateway.errors import ConfigError

ROOT = Path(__file__).parent.parent


def test_rendered_defaults_load_back(tmp_path):
    """The file init writes loads into exactly the defaults, paths relative to it."""
    path = tmp_path / "gatewayd.toml"
    path.write_text(config.render())
    loaded = config.load(path)
    assert loaded == config.defaults(tmp_path.resolve())
    assert loaded.paths_spool == (tmp_path / "spool").resolve()
    assert loaded.retry_first_seconds == 300 and loaded.retry_lifetime_seconds == 5 * 86400


@pytest.mark.parametrize("text, words", [
    ("[retry]\nfirst_secnds = 5\n", "retry.first_secnds"),
    ("[retry]\nfirst_seconds = 0\n", "outside"),
    ("[retry]\nfirst_seconds = \"5\"\n", "whole number"),
    ("[paths]\nspool = 3\n", "path"),
    ("[retry\n", "TOML"),
    ("debug = true\n", "debug"),
    ('[identities.x]\nkind = "gp"\n', "identities.x.kind"),
    ('[identities.x]\nkind = "his"\nagb = ["123"]\n', "identities.x.agb"),
    ('[identities.x]\nkind = "his"\nagb = []\npull = "06005678"\n', "identities.x.pull"),
    ('[identities.x]\nkind = "his"\ncert = "a.pem"\n', "identities.x.cert"),
    ('[node]\nname = "node a"\n', "node.name = 'node a' must be letters"),
    ('[node]\nname = "' + "n" * 65 + '"\n', "at most 64"),
    ("[delivery]\nlease_seconds = 5\n", "delivery.lease_seconds = 5 is outside 6..3600"),
    ("[delivery]\nlease_seconds = 30\n", "delivery.lease_seconds = 30 must be at least "
     "delivery.timeout_seconds + 5 (35): a claim may not run out while its push can still "
     "succeed"),
])
def test_bad_settings_are_named(tmp_path, text, words):
    """Unknown keys, wrong types, values out of bounds, bad TOML and bad identities are
    errors naming the key."""
    path = tmp_path / "gatewayd.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    assert words in str(caught.value)


def test_example_file_matches_the_declared_settings():
    """conf/gatewayd.toml is exactly what the code declares (regenerate it with config.render())."""
    assert (ROOT / "conf" / "gatewayd.toml").read_text() == config.render(samples=True)


def test_sample_identities_load(tmp_path):
    """The identities init writes load, with their mandates and spools."""
    path = tmp_path / "gatewayd.toml"
    path.write_text(config.render(samples=True))
    brink = config.identity(config.load(path), "his-brink")
    assert (brink.kind, brink.agb, brink.pull) == ("his", frozenset({"01234567"}), "")
    assert config.identity(config.load(path), "zis-eemland").pull == "06005678"
