"""The job vocabulary, without Ray: what a job declares, and the job it resolves to for a config.

A job declares its steps. A model step names its config section, and that section gives the model
(id and revision for run.json), its decode target, its resources (batch size, CPUs, GPUs, actors) and a
part of the config digest; so a job's models, digest sections and resources follow from its step list.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import pyarrow as pa

from pipeline.config import Config, ConfigError, ModelConfig
from pipeline.decode.geometry import Target
from pipeline.schema import KEY, META, SOURCE, STATUS, pixel_column


@dataclass(frozen=True)
class StageSpec:
    """A stage as the Ray adapter runs it: `fn(*args, **kwargs)` once per task or actor, then per batch.
    `actor=True` for stages that load a model."""

    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    actor: bool = False
    batch_size: int | None = 32  # None: each block as it comes
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    concurrency: int | None = None
    # A model stage with no `concurrency` on GPUs: its pool grows from one actor up to this many (Ray Data's
    # autoscaling actor pool), set for the cluster it runs on (with_cluster_gpus); None: `actors`, fixed.
    max_actors: int | None = None
    overlap: bool = False  # a model stage: two batches in each actor at once (models/turns.py)

    @property
    def actors(self) -> int:
        """How many actors a model stage starts with: `concurrency`, one by default."""
        return self.concurrency or 1

    @property
    def most_actors(self) -> int:
        """How many actors a model stage may run: its pool's upper bound."""
        return max(self.max_actors or 0, self.actors)

    @property
    def autoscales(self) -> bool:
        """A model stage on GPUs whose config names no `concurrency`: one actor per GPU the cluster has."""
        return self.actor and self.concurrency is None and self.num_gpus > 0


def model_target(section: str, cfg: ModelConfig, storage: dict[str, Any]) -> Target:
    """The decode target of a model that reads pixels: its image processor's size (no weights loaded)."""
    from pipeline.models.loading import image_target

    return image_target(cfg, pixel_column(section), storage)  # type: ignore[no-any-return]


def _no_options(cfg: Config) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class ModelStep:
    """A stage that loads a model, run by an actor pool: `stage(cfg.<section>, pixel column, storage
    options, **options(cfg))`. `target` gives its decode size (None: it reads no pixels); `uses` names
    other config sections that shape what it writes."""

    stage: type
    section: str
    target: Callable[[str, Any, dict[str, Any]], Target] | None = model_target
    options: Callable[[Config], dict[str, Any]] = _no_options
    uses: tuple[str, ...] = ()


@dataclass(frozen=True)
class CpuStep:
    """A model-free stage: `stage(cfg.<section>, **options(cfg))` on CPU tasks; `uses` as ModelStep's."""

    stage: type
    section: str
    batch_size: int = 256
    num_cpus: float = 0.25
    options: Callable[[Config], dict[str, Any]] = _no_options
    uses: tuple[str, ...] = ()


Step = ModelStep | CpuStep


@dataclass(frozen=True)
class Finished:
    """What a post-run hook gets: the config, the output, the config digest and the job's own options."""

    cfg: Config
    output: str
    digest: str
    options: dict[str, Any]


@dataclass(frozen=True)
class Flag:
    """A job's own command-line flag: a switch that stands for a config override (`--embed` →
    `clean.embed=true`), or an option with a value (`--submission F`) handed to the post-run hook."""

    name: str
    help: str
    override: str | None = None
    metavar: str | None = None

    @property
    def dest(self) -> str:
        return self.name.lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class JobSpec:
    """What a job module declares (jobs/*.py)."""

    name: str
    help: str
    steps: Callable[[Config], list[Step]]
    tables: Callable[[Config], dict[str, pa.Schema]]  # output folder under OUT → its schema
    defaults: dict[str, dict[str, Any]] = field(default_factory=dict)  # under the YAML file and --set
    finish: Callable[[Finished], dict[str, Any]] | None = None  # after every shard is committed
    flags: tuple[Flag, ...] = ()
    # (config, output, config digest) → the committer's decide-at-commit hook, or None (calibration.py)
    commit_hook: Callable[[Config, str, str], Any] | None = None
    # Whether the job scores the alt-text (for this config): an input without one is then an error before
    # Ray starts, unless the config says there is none (input.text_column: null)
    alt_text: Callable[[Config], bool] | None = None


@dataclass(frozen=True)
class Job:
    """A JobSpec resolved for a config: what the run loop runs."""

    name: str
    stages: list[StageSpec]
    tables: dict[str, pa.Schema]
    sections: tuple[str, ...]  # config sections that shape the output (for the config digest)
    models: dict[str, str] = field(default_factory=dict)  # section → model id, for run.json
    revisions: dict[str, str | None] = field(default_factory=dict)  # section → resolved revision
    finish: Callable[[Finished], dict[str, Any]] | None = None
    options: dict[str, Any] = field(default_factory=dict)  # the job's own flags' values
    commit_hook: Callable[[Config, str, str], Any] | None = None
    alt_text: bool = False  # the job scores the alt-text (JobSpec.alt_text)

    def with_cluster_gpus(self, gpus: float) -> Job:
        """The job with its autoscaling model stages bounded by a cluster of `gpus` GPUs: each may grow to as
        many actors as there are sets of the job's models (their `num_gpus`, summed) that the GPUs hold."""
        per_set = sum(s.num_gpus for s in self.stages if s.actor)
        if not per_set:
            return self
        most = max(1, int(gpus / per_set + 1e-9))
        return replace(self, stages=[replace(s, max_actors=most) if s.autoscales else s for s in self.stages])

    def columns(self) -> list[str]:
        # key/source/status/meta always travel to the driver: the committer reads shard-end rows from them.
        names = [KEY, SOURCE, STATUS, META, *(n for schema in self.tables.values() for n in schema.names)]
        return list(dict.fromkeys(names))


def read_fused(cfg: Config) -> bool:
    """Whether each read runs fused with decode in one task: `input.num_cpus` null (the default)."""
    return cfg.input.num_cpus is None


def decode_stage(cfg: Config, targets: dict[str, Target]) -> tuple[StageSpec, dict[str, str]]:
    """One decode for every model of the job: equal targets share a pixel column.
    Returns the stage and section → pixel column."""
    from pipeline.stages.decode import DecodeImages

    unique: dict[Target, Target] = {}
    columns: dict[str, str] = {}
    for role, t in targets.items():
        spec = replace(t, name="")
        if spec not in unique:
            unique[spec] = replace(t, name=pixel_column(role))
        columns[role] = unique[spec].name
    d = cfg.decode
    if d.device == "cuda" and (dynamic := [role for role, t in targets.items() if t.dynamic]):
        raise ConfigError(f"config: decode.device: 'cuda' decodes to one size per model, but {dynamic[0]}.model "
                          f"({getattr(cfg, dynamic[0]).model}) sizes each image by its aspect ratio; use 'cpu'")
    if d.device == "cuda":
        import importlib.util

        if importlib.util.find_spec("torchvision") is None:
            raise ConfigError("config: decode.device: 'cuda' needs torchvision (torchvision.io.decode_jpeg), which is "
                              "not installed here; install the torchvision that matches your torch, or use 'cpu'")
    # Fused with the read, decode takes each read block whole: Ray fuses a read with a map only when
    # the map asks for no batch size of its own.
    stage = StageSpec(DecodeImages, (d, tuple(unique.values()), cfg.input), batch_size=None if read_fused(cfg) else d.batch_size,
                      num_cpus=d.num_cpus, concurrency=d.concurrency)
    return stage, columns


def build_job(spec: JobSpec, cfg: Config, options: dict[str, Any] | None = None) -> Job:
    """Resolves a job for a config, on the driver, before Ray starts: every model is found (or a
    ConfigError names its field), its decode target read from its processor, its revision recorded."""
    from pipeline.models.loading import resolve_checked

    steps = spec.steps(cfg)
    models = [s for s in steps if isinstance(s, ModelStep)]
    revisions: dict[str, str | None] = {}
    for ms in models:
        revisions[ms.section] = resolve_checked(ms.section, getattr(cfg, ms.section), cfg.storage)[1]
    targets = {ms.section: ms.target(ms.section, getattr(cfg, ms.section), cfg.storage) for ms in models if ms.target}
    decode, pixels = decode_stage(cfg, targets)
    stages = [decode]
    for s in steps:
        if isinstance(s, ModelStep):
            m: ModelConfig = getattr(cfg, s.section)
            stages.append(StageSpec(s.stage, (m, pixels.get(s.section), cfg.storage), s.options(cfg), actor=True,
                                    batch_size=m.batch_size, num_cpus=m.num_cpus, num_gpus=m.num_gpus,
                                    concurrency=m.concurrency, overlap=m.overlap))
        else:
            stages.append(StageSpec(s.stage, (getattr(cfg, s.section),), s.options(cfg), batch_size=s.batch_size,
                                    num_cpus=s.num_cpus))
    sections = tuple(dict.fromkeys(x for s in steps for x in (s.section, *s.uses)))
    return Job(name=spec.name, stages=stages, tables=spec.tables(cfg), sections=sections,
               models={ms.section: getattr(cfg, ms.section).model for ms in models}, revisions=revisions,
               finish=spec.finish, options=dict(options or {}), commit_hook=spec.commit_hook,
               alt_text=bool(spec.alt_text and spec.alt_text(cfg)))
