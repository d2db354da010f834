"""The launch config: typed, validated at the edge, loaded from YAML.

One small model per component (job, centers, links, strategy, optimizer, codec, model,
data, train, wan); unknown fields are errors. :func:`load_config` turns every validation
problem into a :class:`ConfigError` whose lines name the field path (``centers[1].workers``)
and the reason.

Environment variables override fields: ``SUANWANG__TRAIN__STEPS=50`` sets ``train.steps``;
list items are addressed by index (``SUANWANG__CENTERS__0__WORKERS=3``). Values are parsed
as YAML scalars. Every override is logged with its effective value.
"""

from __future__ import annotations

import itertools
import logging
import os
import pathlib
import re
from typing import Annotated, Any, Literal, Mapping, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from suanwang.runtime.compress.spec import CodecConfig

log = logging.getLogger(__name__)

ENV_PREFIX = "SUANWANG__"
_NAME = r"^[a-z][a-z0-9_-]{0,31}$"


class ConfigError(ValueError):
    """A launch config is invalid. ``problems`` holds one ``(path, reason)`` per error."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        lines = [f"{source}: invalid config"] + [f"  {path}: {reason}" for path, reason in problems]
        super().__init__("\n".join(lines))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class JobSection(_Section):
    """Identity of the job and where it writes."""

    name: Annotated[str, Field(pattern=_NAME)] = "suanwang"
    seed: int = 0
    output_dir: str = "runs/{name}"

    @property
    def resolved_output_dir(self) -> pathlib.Path:
        return pathlib.Path(self.output_dir.format(name=self.name))


class CenterConfig(_Section):
    """One compute center."""

    name: Annotated[str, Field(pattern=_NAME)]
    workers: Annotated[int, Field(ge=1, le=4096)]
    device: Literal["cpu", "cuda", "npu"] = "cpu"
    # `embedded` puts the center in the driver's local Ray instance; otherwise the
    # address of that center's own Ray cluster (used by `suanwang center`).
    ray: str = "embedded"
    # Inner steps per round for this center, replacing strategy.inner_steps (diloco,
    # streaming): a faster center does more steps in the same wall time instead of waiting.
    # The cross-center mean weights every center by the samples it actually processed.
    inner_steps: Annotated[int, Field(ge=1)] | None = None


class LinkConfig(_Section):
    """A WAN link between two centers, as declared (the gateways also measure it)."""

    between: tuple[str, str]
    bandwidth_mbit: Annotated[float, Field(gt=0)]
    rtt_ms: Annotated[float, Field(ge=0)] = 0.0

    @field_validator("between")
    @classmethod
    def _distinct(cls, v: tuple[str, str]) -> tuple[str, str]:
        if v[0] == v[1]:
            raise ValueError(f"a link joins two different centers, got {v[0]!r} twice")
        return v


class SyncStrategy(_Section):
    """Exchange (reduced) gradients across centers after every inner step."""

    kind: Literal["sync"]


class DilocoStrategy(_Section):
    """DiLoCo: ``inner_steps`` local steps, then an outer step on the mean pseudo-gradient."""

    kind: Literal["diloco"]
    inner_steps: Annotated[int, Field(ge=1)] = 20
    outer_lr: Annotated[float, Field(gt=0)] = 0.7
    outer_momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    nesterov: bool = True


class StreamingStrategy(_Section):
    """Streaming DiLoCo: the model is cut into ``fragments``; every ``inner_steps /
    fragments`` inner steps one fragment is synchronised (so each fragment every
    ``inner_steps``), its exchange overlapping the next inner steps (``overlap: 1``); the
    fragment's new global value arrives one round late and is mixed into the local one:
    ``local = mix * local + (1 - mix) * global``."""

    kind: Literal["streaming"]
    inner_steps: Annotated[int, Field(ge=1)] = 20
    fragments: Annotated[int, Field(ge=1, le=1024)] = 4
    overlap: Literal[0, 1] = 1
    # time-boxed slots: every center runs inner steps until the slot's wall-clock deadline
    # (at least one, at most twice its counted steps) instead of a fixed count; the
    # reduction weights by samples taken (see suanwang.runtime.slots)
    slot_s: Annotated[float, Field(gt=0)] | None = None
    mix: Annotated[float, Field(ge=0, le=1)] = 0.5
    outer_lr: Annotated[float, Field(gt=0)] = 0.7
    outer_momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    nesterov: bool = True
    # under overlap, mix each fragment's global value in as soon as it reaches the workers
    # (at the next inner step that every worker of the center reached with it in hand)
    # instead of after the next slot: it is a slot fresher. Runs are then no longer
    # reproducible bit for bit. Needs overlap: 1 and fragments >= 2.
    apply_on_arrival: bool = False

    @model_validator(mode="after")
    def _divisible(self) -> "StreamingStrategy":
        if self.inner_steps % self.fragments:
            raise ValueError(
                f"inner_steps: {self.inner_steps} is not a multiple of fragments ({self.fragments})"
            )
        if self.apply_on_arrival and (not self.overlap or self.fragments < 2):
            raise ValueError(
                "apply_on_arrival: needs overlap: 1 and fragments >= 2 (with one fragment the "
                "next contribution depends on the result, which must be applied first)"
            )
        if self.slot_s is not None and not self.overlap:
            raise ValueError(
                "slot_s: time-boxed slots need overlap: 1 (without it every round's exchange "
                "would come out of the next slot)"
            )
        return self


StrategyConfig = Annotated[Union[SyncStrategy, DilocoStrategy, StreamingStrategy], Field(discriminator="kind")]


class OptimizerConfig(_Section):
    """The inner optimizer, run by every worker."""

    kind: Literal["adamw", "sgd"] = "adamw"
    lr: Annotated[float, Field(gt=0)] = 2e-3
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.0


class ModelConfig(_Section):
    """Which model to build and how large."""

    name: Literal["clip"] = "clip"
    size: Literal["tiny", "small", "base", "1b"] = "tiny"


class DataConfig(_Section):
    """The data set; each center trains only on its own shard."""

    name: Literal["digits"] = "digits"
    batch_size: Annotated[int, Field(ge=1)] = 32
    eval_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2
    eval_batch_size: Annotated[int, Field(ge=2)] = 64


class TrainConfig(_Section):
    """How long to train."""

    steps: Annotated[int, Field(ge=1)] = 200
    # stop once the centers have taken this many samples in all (diloco, streaming); the
    # last round's steps are cut to fill it. Default: the rounds that train.steps makes.
    samples: Annotated[int, Field(ge=1)] | None = None
    eval_every_rounds: Annotated[int, Field(ge=1)] = 1
    # where held-out evaluations run: on the first center's leader (it pauses training for
    # them) or on a separate CPU evaluator actor, off the training path
    eval_on: Literal["leader", "evaluator"] = "leader"
    # check (SHA-256 of the parameters) that every center holds the same state every N
    # rounds and at every evaluation; 0: only at evaluations
    verify_every_rounds: Annotated[int, Field(ge=0)] = 1
    # torch.compile every worker's model (nn.Module.compile); it compiles at start-up, on
    # one untimed forward and backward of the first batch (that batch is trained on as
    # usual), not in the first round. Costs ~20 s per process without a warm inductor
    # cache; cuts the demo model's CPU step by about a quarter.
    compile: bool = False


class TlsConfig(_Section):
    """Mutual TLS files; ``{center}`` in a path becomes each center's name. Relative paths
    resolve against the working directory of the process that starts the gateway."""

    ca: str
    cert: str = "{center}.pem"
    key: str = "{center}.key"


class WanConfig(_Section):
    """The WAN plane between gateways."""

    host: str = "127.0.0.1"
    round_timeout_s: Annotated[float, Field(gt=0)] = 120.0
    # gather: every center sends its payload to every other; two_shot: direct
    # reduce-scatter + all-gather over the full mesh (two hops); ring: the same around a
    # ring (2 (n - 1) hops). two_shot and ring move 2 (n - 1) / n payloads per center and
    # take dense codecs only; auto: two_shot for dense codecs with 3+ centers.
    schedule: Literal["auto", "gather", "two_shot", "ring"] = "auto"
    chunk_bytes: Annotated[int, Field(ge=1024, le=64 * 2**20)] = 1 * 2**20
    max_payload_bytes: Annotated[int, Field(ge=1)] = 8 * 2**30
    # Plaintext gRPC. Only for a single trusted machine (the embedded demo); every run
    # that uses it says so.
    insecure: bool = False
    tls: TlsConfig | None = None
    token: str | None = None

    @model_validator(mode="after")
    def _secure_or_said_so(self) -> "WanConfig":
        if not self.insecure and self.tls is None:
            raise ValueError(
                "tls: required unless insecure is true (make development certificates "
                "with `suanwang certs CONFIG --out DIR`)"
            )
        return self


class CodecGroupConfig(_Section):
    """Parameters whose names match ``match`` (fnmatch glob, e.g. ``*.bias``) use ``codec``."""

    match: Annotated[str, Field(min_length=1)]
    codec: CodecConfig


class CheckpointConfig(_Section):
    """When and where a job saves its state (``every_rounds: 0`` never)."""

    every_rounds: Annotated[int, Field(ge=0)] = 0
    dir: str = "{output_dir}/checkpoints"
    keep: Annotated[int, Field(ge=1)] = 2


class JobConfig(_Section):
    """A whole launch config."""

    job: JobSection = JobSection()
    centers: Annotated[list[CenterConfig], Field(min_length=1)]
    links: list[LinkConfig] = []
    strategy: StrategyConfig = DilocoStrategy(kind="diloco")
    optimizer: OptimizerConfig = OptimizerConfig()
    codec: CodecConfig = CodecConfig()
    # Per tensor group codecs: the first matching entry wins; unmatched parameters use `codec`.
    codec_groups: list[CodecGroupConfig] = []
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    wan: WanConfig

    @model_validator(mode="after")
    def _topology(self) -> "JobConfig":
        names = [c.name for c in self.centers]
        seen: set[str] = set()
        for i, n in enumerate(names):
            if n in seen:
                raise ValueError(f"centers[{i}].name: duplicate center name {n!r}")
            seen.add(n)
        pairs: set[frozenset[str]] = set()
        for i, link in enumerate(self.links):
            for end in link.between:
                if end not in seen:
                    raise ValueError(
                        f"links[{i}].between: unknown center {end!r}; centers are {names}"
                    )
            pair = frozenset(link.between)
            if pair in pairs:
                raise ValueError(f"links[{i}].between: a second link between {sorted(pair)}")
            pairs.add(pair)
        for i, c in enumerate(self.centers):
            if c.inner_steps is None:
                continue
            if isinstance(self.strategy, SyncStrategy):
                raise ValueError(
                    f"centers[{i}].inner_steps: strategy sync takes one step per round; "
                    "per-center inner steps need diloco or streaming"
                )
            if isinstance(self.strategy, StreamingStrategy) and c.inner_steps % self.strategy.fragments:
                raise ValueError(
                    f"centers[{i}].inner_steps: {c.inner_steps} is not a multiple of "
                    f"strategy.fragments ({self.strategy.fragments})"
                )
        if self.train.samples is not None:
            if isinstance(self.strategy, SyncStrategy):
                raise ValueError("train.samples: strategy sync takes one step per round; a sample budget needs diloco or streaming")
            one_each = sum(self.data.batch_size * c.workers for c in self.centers)
            if self.train.samples < one_each:
                raise ValueError(
                    f"train.samples: {self.train.samples} is less than one step of every center ({one_each} samples)"
                )
        for a, b in itertools.combinations(names, 2):
            if frozenset((a, b)) not in pairs:
                raise ValueError(f"links: no link declared between {a!r} and {b!r}")
        return self

    @property
    def inner_steps(self) -> int:
        """Inner steps per round (per slot under streaming) of a center without its own
        ``inner_steps``; ``train.steps`` counts these."""
        return self.center_inner_steps(None)

    def center_inner_steps(self, center: str | None) -> int:
        """Inner steps per round (per slot under streaming) of ``center``."""
        own = next((c.inner_steps for c in self.centers if c.name == center), None)
        if isinstance(self.strategy, DilocoStrategy):
            return own or self.strategy.inner_steps
        if isinstance(self.strategy, StreamingStrategy):
            return (own or self.strategy.inner_steps) // self.strategy.fragments
        return 1

    def samples_per_step(self, center: str) -> int:
        """Samples one inner step of ``center`` takes (every worker's batch)."""
        return self.data.batch_size * next(c.workers for c in self.centers if c.name == center)

    @property
    def rounds(self) -> int:
        """Rounds in the job: ``train.steps`` over the strategy's steps per round; a center
        with its own ``inner_steps`` runs ``rounds * center_inner_steps(center)`` steps.
        With ``train.samples``, the rounds that budget takes at the counted steps (the
        job itself stops on the budget: time-boxed slots take more or fewer)."""
        if self.train.samples is not None:
            per_round = sum(self.samples_per_step(c.name) * self.center_inner_steps(c.name) for c in self.centers)
            return -(-self.train.samples // per_round)
        return -(-self.train.steps // self.inner_steps)

    @property
    def checkpoint_dir(self) -> pathlib.Path:
        return pathlib.Path(self.checkpoint.dir.format(output_dir=self.job.resolved_output_dir))

    def link(self, a: str, b: str) -> LinkConfig:
        for link in self.links:
            if set(link.between) == {a, b}:
                return link
        raise KeyError(f"no link between {a!r} and {b!r}")


# --------------------------------------------------------------------------- loading


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("sync", "diloco", "streaming") and out.endswith("strategy"):
            continue  # pydantic names the union branch; the user wrote no such key
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _problems(err: ValidationError) -> list[tuple[str, str]]:
    problems = []
    for e in err.errors():
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check its spelling)"
        elif e["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
            # our model validators name the path below the model they validate
            m = re.match(r"^([\w\[\].]+): (.*)$", msg)
            if m:
                base = _path(e["loc"]) if e["loc"] else ""
                sub = m.group(1)
                problems.append((f"{base}.{sub}" if base and not sub.startswith("[") else base + sub, m.group(2)))
                continue
        elif e["type"] == "literal_error":
            msg = f"{msg} (got {e['input']!r})"
        problems.append((_path(e["loc"]), msg))
    return problems


def _env_overrides(data: dict[str, Any], environ: Mapping[str, str]) -> list[tuple[str, str]]:
    """Apply ``SUANWANG__A__B=value`` overrides to ``data`` in place; returns problems."""
    problems = []
    for key in sorted(k for k in environ if k.startswith(ENV_PREFIX)):
        parts = [p.lower() for p in key[len(ENV_PREFIX):].split("__") if p]
        if not parts:
            continue
        value = yaml.safe_load(environ[key])
        node: Any = data
        dotted = ""
        try:
            for part in parts[:-1]:
                if isinstance(node, list):
                    node = node[int(part)]
                    dotted += f"[{part}]"
                else:
                    node = node.setdefault(part, {})
                    dotted += ("." if dotted else "") + part
            last = parts[-1]
            if isinstance(node, list):
                node[int(last)] = value
                dotted += f"[{last}]"
            else:
                node[last] = value
                dotted += ("." if dotted else "") + last
        except (ValueError, IndexError, TypeError, AttributeError):
            problems.append((".".join(parts), f"{key} does not name a field of this config"))
            continue
        log.info("config override %s = %r (from %s)", dotted, value, key)
    return problems


def parse_config(
    data: Any, source: str = "<config>", environ: Mapping[str, str] | None = None
) -> JobConfig:
    """Validate a config given as plain data (as YAML would load it).

    Args:
        data: the mapping loaded from YAML.
        source: where it came from, for error messages.
        environ: environment for ``SUANWANG__`` overrides (default: ``os.environ``).

    Raises:
        ConfigError: naming each bad field path and the reason.
    """
    if not isinstance(data, dict):
        raise ConfigError(source, [("(top level)", "a config is a mapping of sections")])
    data = yaml.safe_load(yaml.safe_dump(data))  # deep copy, plain types only
    problems = _env_overrides(data, os.environ if environ is None else environ)
    if problems:
        raise ConfigError(source, problems)
    try:
        return JobConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(source, _problems(err)) from None


def load_config(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> JobConfig:
    """Load and validate a YAML launch config.

    Raises:
        ConfigError: the file is missing, is not YAML, or fails validation.
    """
    p = pathlib.Path(path)
    try:
        text = p.read_text()
    except OSError as err:
        raise ConfigError(str(p), [("(file)", err.strerror or str(err))]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(str(p), [("(yaml)", str(err).replace("\n", " "))]) from None
    return parse_config(data, str(p), environ)


def demo_config_path() -> pathlib.Path:
    """The packaged demo config (three centers with unequal worker counts)."""
    import suanwang.launch.configs as configs

    return pathlib.Path(configs.__file__).with_name("demo.yaml")
