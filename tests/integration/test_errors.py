"""Every error a user can make fails in one line with exit 2, naming the field or the location, before
Ray starts (the Ray adapter's init is replaced by one that fails the test if it is ever called)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pipeline.cli import main
from tests.fixtures.paths import CONFIGS, TINY
from tests.fixtures.samples import write_webdataset


@pytest.fixture()
def no_ray(monkeypatch):
    from pipeline.runner import ray_start

    def refuse(cfg):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(ray_start, "init_ray", refuse)


@pytest.fixture()
def shards(tmp_path):
    write_webdataset(tmp_path / "in", n_shards=1, per_shard=2, size=64)
    return str(tmp_path / "in" / "*.tar")


def run(capsys, job: str, shards: str, output: str, *extra: str, config: str = TINY) -> tuple[int, str]:
    code = main([job, "--input", shards, "--output", output, "--config", config, *extra])
    err = capsys.readouterr().err.strip()
    return code, err


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("capfilt: ")]
    assert len(lines) == 1, err
    return lines[0]


def test_clean_with_hub_scorers_offline_names_the_field_and_the_fix(no_ray, capsys, shards, tmp_path):
    # tiny.yaml sets only the captioner: clean's ITM default is a hub model, unreachable here.
    code, err = run(capsys, "clean", shards, str(tmp_path / "out"))
    line = one_line(err)
    assert code == 2
    assert line.startswith("capfilt: config: itm.model: cannot load 'Salesforce/blip-itm-base-coco'")
    assert "HF_HUB_OFFLINE" in line and "local directory" in line and "itm.model=tiny:blip-itm" in line
    assert "Traceback" not in err


def test_a_model_id_that_does_not_exist(no_ray, capsys, shards, tmp_path):
    code, err = run(capsys, "caption", shards, str(tmp_path / "out"), "--set", "caption.model=no-such-org/no-such-model")
    assert code == 2 and one_line(err).startswith("capfilt: config: caption.model: cannot load 'no-such-org/no-such-model'")


def test_a_model_directory_that_does_not_exist(no_ray, capsys, shards, tmp_path):
    missing = tmp_path / "models" / "blip"
    code, err = run(capsys, "caption", shards, str(tmp_path / "out"), "--set", f"caption.model={missing}")
    assert code == 2 and one_line(err) == f"capfilt: config: caption.model: directory '{missing}' does not exist"


def test_a_directory_without_a_model(no_ray, capsys, shards, tmp_path):
    (tmp_path / "empty").mkdir()
    code, err = run(capsys, "caption", shards, str(tmp_path / "out"), "--set", f"caption.model={tmp_path / 'empty'}")
    assert code == 2 and "caption.model: directory" in one_line(err) and "no config.json" in err


def test_an_output_bucket_that_does_not_exist(no_ray, capsys, s3, shards):
    code, err = run(capsys, "caption", shards, "s3://bucket-that-does-not-exist/x")
    assert code == 2
    assert one_line(err) == ("capfilt: output 's3://bucket-that-does-not-exist/x' cannot be written: "
                             "the bucket 'bucket-that-does-not-exist' does not exist")
    assert not s3.exists("bucket-that-does-not-exist")


def test_an_output_that_cannot_be_written(no_ray, capsys, shards, tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    out = tmp_path / "a-file" / "out"
    code, err = run(capsys, "caption", shards, str(out))
    assert code == 2 and one_line(err).startswith(f"capfilt: output '{out}' cannot be written: ")


def test_a_writable_output_keeps_no_probe(tmp_path):
    from pipeline.io.writer import check_writable

    check_writable(str(tmp_path / "out"))
    assert list((tmp_path / "out").iterdir()) == []


def test_blip_with_a_static_cache(no_ray, capsys, shards, tmp_path):
    code, err = run(capsys, "caption", shards, str(tmp_path / "out"), "--set", "caption.cache=static")
    assert code == 2 and one_line(err).startswith("capfilt: config: caption.cache: 'static' is not supported by BLIP")


def test_gpu_decode_without_torchvision(no_ray, capsys, shards, tmp_path):
    import importlib.util

    if importlib.util.find_spec("torchvision") is not None:
        pytest.skip("torchvision is installed here")
    code, err = run(capsys, "embed", shards, str(tmp_path / "out"), "--set", "decode.device=cuda",
                    config=str(CONFIGS / "tiny-embed.yaml"))
    assert code == 2 and one_line(err).startswith("capfilt: config: decode.device: 'cuda' needs torchvision")


def test_inputs_that_match_nothing(no_ray, capsys, tmp_path):
    code, err = run(capsys, "caption", str(tmp_path / "nothing-{0..1}.tar"), str(tmp_path / "out"))
    assert code == 2 and one_line(err) == f"capfilt: input '{tmp_path / 'nothing-0.tar'}' matched nothing"


def test_a_glob_that_matches_only_tar_gz(no_ray, capsys, tmp_path):
    (tmp_path / "in").mkdir()
    for i in range(2):
        (tmp_path / "in" / f"{i:05d}.tar.gz").write_bytes(b"gzip")
    code, err = run(capsys, "caption", str(tmp_path / "in" / "*"), str(tmp_path / "out"))
    assert code == 2 and one_line(err).startswith(f"capfilt: input '{tmp_path / 'in' / '*'}' matched 2 object(s) "
                                                  "(00000.tar.gz, 00001.tar.gz) but none that capfilt reads")


def test_help_and_a_config_error_import_no_ray():
    """In a fresh interpreter: neither `--help` nor a bad config imports Ray (let alone starts it)."""
    probe = ("import sys\nfrom pipeline.cli import main\n"
             "try:\n    code = main(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\n"
             "print('ray' in sys.modules, code)")
    for args, code in [(["--help"], 0), (["caption", "--input", "x", "--output", "y", "--set", "caption.num_beams=x"], 2)]:
        res = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=120)
        assert res.stdout.strip().splitlines()[-1] == f"False {code}", res.stderr[-2000:]
