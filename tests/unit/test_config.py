
import pytest

from jobs.caption import JOB as CAPTION
from jobs.clean import JOB as CLEAN
from pipeline.config import ConfigError, load_config
from tests.fixtures.paths import CONFIGS as CONFIG_DIR

CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))


def test_defaults_and_overrides_parse_as_yaml():
    cfg = load_config(None, ["caption.num_beams=5", "decode.formats=[JPEG, PNG]", "caption.prompt=a photo of"])
    assert cfg.caption.num_beams == 5
    assert cfg.decode.formats == ("JPEG", "PNG")
    assert cfg.caption.prompt == "a photo of"
    assert cfg.caption.top_p == 0.9


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_preset_loads(path):
    cfg = load_config(path)
    assert cfg.caption.model


@pytest.mark.parametrize(
    "override, message",
    [
        ("caption.num_beams=three", "config: caption.num_beams: expected int, got 'three'"),
        ("caption.beams=3", "config: caption.beams: unknown field"),
        ("decode.max_pixels=0", "config: decode.max_pixels: expected a positive number, got 0"),
        ("caption.strategy=topk", "config: caption.strategy: expected 'greedy' | 'beam' | 'sample', got 'topk'"),
        ("caption.top_p=1.5", "config: caption.top_p: expected a number in (0, 1]"),
        ("caption.num_gpus=-1", "config: caption.num_gpus: expected a number ≥ 0, got -1"),
        ("caption.num_captions=4", "config: caption.num_captions: expected ≤ num_beams (3)"),
        ("caption", "expected key=value"),
        ("decode.draft=maybe", "config: decode.draft: expected bool, got 'maybe'"),
        ("clean.calibration_shards=0", "config: clean.calibration_shards: expected an integer >= 1, got 0"),
        ("clean.mode=keep_some", "config: clean.mode: expected 'threshold' | 'top_fraction' | 'keep_fraction' | 'rerank'"),
        ("curate.nsfw_max=0.5", "config: curate.nsfw_max: set, but curate.nsfw (the head it thresholds) is not"),
        ("curate.aesthetic_min=six", "config: curate.aesthetic_min: expected float"),
    ],
)
def test_bad_values_fail_with_one_line_naming_the_field(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_yaml_file_errors(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("caption:\n  batch_size: [1, 2]\n")
    with pytest.raises(ConfigError, match=r"caption.batch_size: expected int, got \[1, 2\]"):
        load_config(p)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    p.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(p)


def test_digest_ignores_wiring_but_not_outputs():
    base = load_config(None)
    assert base.digest() == load_config(None, ["caption.batch_size=7", "run.progress=none"]).digest()
    assert base.digest() != load_config(None, ["caption.num_beams=4"]).digest()
    assert base.digest() != load_config(None, ["caption.model=x/y"]).digest()


def test_secrets_are_redacted():
    cfg = load_config(None, ["storage={key: AKIA123, secret: s3cr3t, client_kwargs: {region_name: x}}"])
    d = cfg.to_dict()
    assert d["storage"]["key"] == "***" and d["storage"]["secret"] == "***"
    assert d["storage"]["client_kwargs"] == {"region_name": "x"}
    assert "s3cr3t" not in str(d)


def test_unknown_image_format_is_a_config_error():
    with pytest.raises(ConfigError, match="decode.formats: expected PIL format names"):
        load_config(None, ["decode.formats=[JPEG, JPG2]"])


def test_job_defaults_sit_under_the_file_and_overrides(tmp_path):
    assert load_config(None, defaults=CLEAN.defaults).caption.strategy == "sample"
    assert load_config(None, defaults=CLEAN.defaults).caption.num_captions == 3
    assert load_config(None, defaults=CAPTION.defaults).caption.strategy == "beam"
    p = tmp_path / "c.yaml"
    p.write_text("caption: {strategy: beam, num_beams: 4, num_captions: 2}\n")
    cfg = load_config(p, ["caption.num_beams=5"], defaults=CLEAN.defaults)
    assert (cfg.caption.strategy, cfg.caption.num_beams, cfg.caption.num_captions) == ("beam", 5, 2)
