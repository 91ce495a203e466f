"""The stderr filter: Ray's known false alarm is dropped, every other byte passes, partial lines at once."""

import os

from pipeline.runner.quiet import StderrFilter, split

ALARM = (b"[2026-12-04 16:56:33,794 E 7052 7052] core_worker.cc:2465: Actor with class name: 'MapWorker(x)' and ID: "
         b"'ed17' has constructor arguments in the object store and max_restarts > 0. If the arguments ...\n")


def test_split_drops_the_alarm_and_passes_the_rest():
    assert split(b"capfilt: hello\n" + ALARM + b"2026 INFO capfilt: progress\n") == (
        b"capfilt: hello\n2026 INFO capfilt: progress\n", b"")
    assert split(b"\r\x1b[K12 images | 1/4 shards") == (b"\r\x1b[K12 images | 1/4 shards", b"")  # a bar: at once
    out, held = split(ALARM[:40])  # the start of a C++ log line: held until it ends
    assert out == b"" and held == ALARM[:40]
    assert split(held + ALARM[40:]) == (b"", b"")
    other = b"[2026-12-04 16:56:33,794 E 1 1] raylet_client.cc:1: a real error\n"
    assert split(other) == (other, b"")


def test_the_filter_on_file_descriptor_2(tmp_path, capfd):
    f = StderrFilter()
    os.write(2, b"before\n" + ALARM[:30])  # the C++ line in two writes, as a logger may flush it
    os.write(2, ALARM[30:] + b"after\n")
    os.write(2, b"no newline at the end")
    f.close()
    err = capfd.readouterr().err
    assert err == "before\nafter\nno newline at the end"
