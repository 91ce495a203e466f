"""The CLI's one-line messages for what goes wrong outside capfilt: a Ray that cannot be attached to."""

from pipeline.cli import _ray_unreachable


def _connection_error(cause: str) -> ConnectionError:
    try:
        try:
            raise RuntimeError(cause)
        except RuntimeError as inner:
            raise ConnectionError("Failed to connect to Ray cluster at 127.0.0.1:6379") from inner
    except ConnectionError as e:
        return e


def test_a_ray_that_wants_a_token_gets_the_fix(monkeypatch):
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    line = _ray_unreachable(_connection_error("InvalidAuthToken: Authentication token is missing or incorrect"))
    assert line.startswith("cannot attach to Ray: Failed to connect to Ray cluster at 127.0.0.1:6379")
    assert "set RAY_AUTH_MODE=token" in line and "\n" not in line


def test_no_token_hint_where_it_is_not_the_cause(monkeypatch):
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    assert "RAY_AUTH_MODE" not in _ray_unreachable(_connection_error("connection refused"))
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # already set: the token itself is wrong, no hint to set it
    assert "RAY_AUTH_MODE" not in _ray_unreachable(_connection_error("InvalidAuthToken"))
