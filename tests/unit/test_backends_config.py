"""deploy/backends.yaml validation, keys, and the cooldown state machine."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.inference.backends.config import BackendConfig, BackendConfigError, load_backends, parse_backends
from services.inference.backends.cooldown import Cooldowns
from services.inference.settings import InferenceSettings

KEY = "sk-secret-value-never-printed"


def test_the_shipped_file_enables_nothing_and_its_examples_are_valid() -> None:
    path = InferenceSettings().backends_file
    assert path is not None
    assert load_backends(path).enabled == []
    examples = path.read_text().split("# Examples:")[1]
    uncommented = "\n".join(line[2:] for line in examples.splitlines() if line.startswith("# "))
    kinds = {b.kind for b in parse_backends(uncommented).enabled}
    assert kinds == {"openai-compatible", "openai", "anthropic"}


def test_models_are_served_under_the_backend_name() -> None:
    config = BackendConfig(name="ollama", kind="openai-compatible", base_url="http://h:1/v1/", models=["a", "b:3b"])
    assert config.model_ids() == ["ollama/a", "ollama/b:3b"]
    assert config.url == "http://h:1/v1"
    assert BackendConfig(name="o", kind="openai", api_key_env="K", models=["m"]).url == "https://api.openai.com/v1"


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("backends: [{name: a, kind: bedrock, models: [m]}]", "backends.0.kind"),
        ("backends: [{name: a, kind: openai-compatible, models: [m]}]", "needs a base_url"),
        ("backends: [{name: a, kind: openai, models: [m]}]", "an openai backend needs a key"),
        ("backends: [{name: a, kind: anthropic, api_key_env: K, models: []}]", "backends.0.models"),
        ("backends: [{name: Big Name, kind: openai, api_key_env: K, models: [m]}]", "lowercase letters"),
        ("backends: [{name: local, kind: openai, api_key_env: K, models: [m]}]", "not 'local'"),
        ("backends: [{name: a, kind: openai, api_key_env: K, api_key_file: /k, models: [m]}]", "not both"),
        ("backends: [{name: a, kind: openai, api_key_env: K, models: [m], timeout: 3}]", "backends.0.timeout"),
        (
            "backends: [{name: a, kind: openai-compatible, base_url: 'http://u:pw@h/v1', models: [m]}]",
            "without credentials",
        ),
        (
            "backends: [{name: a, kind: openai, api_key_env: K, models: [m]}, "
            "{name: a, kind: openai, api_key_env: K, models: [n]}]",
            "unique: a",
        ),
        ("backends: [{name: a", "not valid YAML"),
    ],
)
def test_a_bad_file_is_refused_with_the_field_at_fault(yaml_text: str, expected: str) -> None:
    with pytest.raises(BackendConfigError) as raised:
        parse_backends(yaml_text, "deploy/backends.yaml")
    assert "deploy/backends.yaml" in str(raised.value)
    assert expected in str(raised.value)


def test_an_unreadable_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BackendConfigError, match="cannot be read"):
        load_backends(tmp_path / "missing.yaml")


def test_keys_come_from_a_variable_or_a_file_and_never_print(tmp_path: Path) -> None:
    by_env = BackendConfig(name="a", kind="openai", api_key_env="A_KEY", models=["m"])
    key = by_env.api_key({"A_KEY": KEY})
    assert key is not None
    assert key.get_secret_value() == KEY
    assert KEY not in repr(key) + str(key) + repr(by_env)

    secret = tmp_path / "key"
    secret.write_text(KEY + "\n")
    by_file = BackendConfig(name="b", kind="anthropic", api_key_file=secret, models=["m"])
    key = by_file.api_key({})
    assert key is not None
    assert key.get_secret_value() == KEY

    assert BackendConfig(name="c", kind="openai-compatible", base_url="http://h", models=["m"]).api_key({}) is None


def test_a_named_but_missing_key_is_a_start_up_error(tmp_path: Path) -> None:
    with pytest.raises(BackendConfigError, match="A_KEY holding its key is not set"):
        BackendConfig(name="a", kind="openai", api_key_env="A_KEY", models=["m"]).api_key({})
    with pytest.raises(BackendConfigError, match="cannot be read"):
        BackendConfig(name="a", kind="openai", api_key_file=tmp_path / "none", models=["m"]).api_key({})


def test_an_empty_setting_means_no_backends_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMMESH_INFERENCE_BACKENDS_FILE", "")
    assert InferenceSettings().backends_file is None
    assert load_backends(None).backends == []


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_backend_cools_down_after_n_failures_in_a_row() -> None:
    clock = Clock()
    book = Cooldowns(failures=3, cooldown_s=10, clock=clock)

    assert not book.failed("a")
    book.succeeded("a")  # a success in between: the count starts again
    assert not book.failed("a")
    assert not book.failed("a")
    assert not book.cooling("a")
    assert book.failed("a")  # the third in a row
    assert book.cooling("a")
    assert not book.cooling("b")

    clock.now = 9.5
    assert book.remaining_s("a") == pytest.approx(0.5)
    clock.now = 10.0
    assert not book.cooling("a")  # tried again


def test_after_its_cooldown_one_more_failure_cools_it_again_and_a_success_clears_it() -> None:
    clock = Clock()
    book = Cooldowns(failures=2, cooldown_s=5, clock=clock)
    book.failed("a")
    book.failed("a")
    clock.now = 6

    assert book.failed("a")
    assert book.cooling("a")

    clock.now = 12
    book.succeeded("a")
    assert not book.failed("a")


def test_a_zero_cooldown_never_skips() -> None:
    book = Cooldowns(failures=1, cooldown_s=0)
    assert not book.failed("a")
    assert not book.cooling("a")
