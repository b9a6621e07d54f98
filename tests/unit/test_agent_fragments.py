"""Configuration fragments and the update task's schedule, without a hub: what a fragment
may set (and the file and line of what it may not), the backoff after failed checks, and
the probation that rolls a fragment back when the agent is not healthy with it."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.config import UpdatesConfig, load_config, parse_fragment
from agent.errors import ConfigError
from agent.fragments import ConfigFragments, FragmentState, Trial, boot
from agent.update_loop import next_delay

AGENT = (
    '[device]\nname = "gw"\n[hub]\nurl = "http://127.0.0.1:9"\n[model]\nmanifest = "m.json"\n'
    '[updates]\nconfig_site = "plant-1"\nfragments = ["scoring"]\nprobation_s = 30\n'
    '[[modbus]]\nname = "p"\nhost = "127.0.0.1"\n[[modbus.tags]]\nname = "x"\naddress = 0\n'
)


def test_a_fragment_may_set_only_live_scoring_settings_and_is_told_where() -> None:
    assert parse_fragment("[model]\nthreshold_factor = 1.5\n", "f.toml") == {
        "model": {"threshold_factor": 1.5}
    }
    with pytest.raises(ConfigError, match=r"f.toml:2: hub: a fragment may set only model"):
        parse_fragment('# redirect the uploads\n[hub]\nurl = "http://x"\n', "f.toml")
    with pytest.raises(ConfigError, match=r"f.toml:2: model.manifest: unknown key"):
        parse_fragment('[model]\nmanifest = "other.json"\n', "f.toml")
    with pytest.raises(ConfigError, match=r"f.toml:2: model.threshold_factor: 0.0 outside"):
        parse_fragment("[model]\nthreshold_factor = 0.0\n", "f.toml")
    with pytest.raises(ConfigError, match="an empty fragment changes nothing"):
        parse_fragment("", "f.toml")


def test_updates_need_a_model_and_a_hub_and_fragments_a_site(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(AGENT.replace('config_site = "plant-1"\n', ""))
    with pytest.raises(ConfigError, match="fragments need config_site"):
        load_config(path)
    path.write_text(AGENT.replace('[hub]\nurl = "http://127.0.0.1:9"\n', ""))
    with pytest.raises(ConfigError, match=r"updates need a \[model\] manifest and a \[hub\] url"):
        load_config(path)


@given(failures=st.integers(0, 200), interval=st.integers(1, 86_400), seed=st.integers(0, 9))
def test_checks_back_off_after_failures_within_their_bounds(
    failures: int, interval: int, seed: int
) -> None:
    cfg = UpdatesConfig(interval_s=interval, max_backoff_s=max(interval, 3600))
    delay = next_delay(failures, cfg, random.Random(seed))
    if failures == 0:
        assert delay == interval
    else:
        assert 1.0 <= delay <= max(1.0, min(cfg.max_backoff_s, interval * 2.0**failures))


def _on_trial(tmp_path: Path, previous: int | None) -> ConfigFragments:
    """Agent files as they are right after version 2 of ``scoring`` was applied."""
    path = tmp_path / "agent.toml"
    path.write_text(AGENT)
    frags = ConfigFragments.for_config(load_config(path), path, tmp_path / "tuf")
    active = frags.dir / "active" / "scoring.toml"
    for v, factor in ((1, 1.2), (2, 2.0)):
        kept = frags.dir / "versions" / "scoring" / f"{v}.toml"
        kept.parent.mkdir(parents=True, exist_ok=True)
        kept.write_text(f"[model]\nthreshold_factor = {factor}\n")
    active.parent.mkdir(parents=True, exist_ok=True)
    active.write_text("[model]\nthreshold_factor = 2.0\n")
    trial = Trial("scoring", 2, previous, since_ns=0, windows=10, problems=["old problem"])
    FragmentState({"scoring": 2}, {}, trial, "").save(frags.dir / "state.json")
    return frags


def test_a_fragment_is_confirmed_when_the_agent_stays_healthy(tmp_path: Path) -> None:
    frags = _on_trial(tmp_path, previous=1)
    assert frags.settle(windows=12, problems=["old problem"], written_ns=10**9) == (None, None)
    result, back = frags.settle(windows=12, problems=["old problem"], written_ns=31 * 10**9)
    assert result is not None and result.outcome == "confirmed" and back is None
    assert frags.state().trial is None and frags.scoring().threshold_factor == 2.0


def test_a_new_problem_during_probation_brings_the_previous_version_back(
    tmp_path: Path,
) -> None:
    frags = _on_trial(tmp_path, previous=1)
    problems = ["old problem", "connector p: restarting"]
    result, back = frags.settle(windows=40, problems=problems, written_ns=31 * 10**9)
    assert result is not None and result.outcome == "rolled_back"
    assert "connector p: restarting" in result.detail
    assert back is not None and back.threshold_factor == 1.2
    st = frags.state()
    assert st.applied == {"scoring": 1} and st.rejected == {"scoring": [2]} and st.trial is None


def test_an_agent_that_signs_nothing_with_a_fragment_loses_it(tmp_path: Path) -> None:
    frags = _on_trial(tmp_path, previous=None)
    result, back = frags.settle(windows=10, problems=["old problem"], written_ns=31 * 10**9)
    assert result is not None and "no window signed" in result.detail
    assert back is not None and back.threshold_factor == 1.0  # agent.toml's own
    assert not (frags.dir / "active" / "scoring.toml").exists()


def test_a_second_start_on_trial_rolls_the_fragment_back_before_loading(
    tmp_path: Path,
) -> None:
    frags = _on_trial(tmp_path, previous=1)
    cfg, said = boot(frags.config_path)  # first start after the install: still on trial
    assert cfg.scoring.threshold_factor == 2.0 and said == []
    cfg, said = boot(frags.config_path)  # it never confirmed: the agent did not come up well
    assert cfg.scoring.threshold_factor == 1.2
    assert [r.outcome for r in said] == ["rolled_back"] and "restarted twice" in said[0].detail


def test_an_installed_fragment_agent_toml_no_longer_takes_is_removed_at_start(
    tmp_path: Path,
) -> None:
    frags = _on_trial(tmp_path, previous=None)
    FragmentState({"scoring": 2}, {}, None, "").save(frags.dir / "state.json")
    (frags.dir / "active" / "scoring.toml").write_text("[model]\nsmoothing_span = 0\n")
    cfg, said = boot(frags.config_path)
    assert cfg.scoring.smoothing_span is None and cfg.fragments == ()
    assert "smoothing_span: 0 outside 1..10000" in said[0].detail
