"""WorkerManager: the runtime changes to the fleet (register, patch, drain) and who owns each.

One owner per worker, so no change is silently undone by another source:

- a worker declared in the configuration file belongs to the file (`declare`): the admin API
  refuses to change or delete it (409 naming the file); editing the file changes it on reload;
- a worker added through the admin API (`register`) belongs to the API and lives until it is
  deleted; with admin.state_file it survives restarts too (`restore`, picker.fleet.api_state:
  each change the API makes is saved before the API answers), else it lives until the picker
  stops;
- a worker the file newly declares at an API worker's url is taken over by the file, at a reload
  or a restart alike (at a restart named in the log, and dropped from the saved state).

Both sources go through the same path: conflict checks before any network call, discovery,
one worker per data-parallel rank, and `drain` (never a bare remove) on removal or replacement.
Discovery sources (Kubernetes, DNS) declare as files do, under their own owner name. Owners
that already know their workers - the configuration at start-up, LiteLLM's deployments -
`adopt` them as given; what a configuration's worker leaves out (its models, a gRPC worker's
tokenizer) is then discovered in the background (`complete_adopted`), so that the picker
serves before its engines answer. The manager is the only writer of membership; a follower
process of `serve --workers` has none running and mirrors the primary's registry
(picker.processes.mirror).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import Field, model_validator
from pydantic_core import PydanticCustomError

from picker.errors import ConfigError, PickerError, UnknownWorker, WorkerConflict
from picker.fleet.api_state import SavedRegistration, StateFile
from picker.fleet.registry import Worker, WorkerRegistry
from picker.fleet.served_models import (
    DiscoverySettings,
    WorkerUnreachable,
    discover,
    expand_dp_ranks,
)
from picker.fleet.worker_spec import (
    U32,
    ConnectionMode,
    HealthOverrides,
    Labels,
    WorkerSpec,
    WorkerType,
    redact_url,
    unpaired_role,
)
from picker.fleet.worker_tls import worker_tls
from picker.strict import StrictModel

__all__ = ["DeclaredInFile", "Registered", "WorkerManager", "WorkerPatch"]

log = logging.getLogger("llm_picker.fleet")


class WorkerPatch(StrictModel):
    """What may change on a registered worker without re-registering it."""

    priority: U32 | None = None
    cost: float | None = Field(default=None, gt=0)
    labels: Labels | None = None
    health: HealthOverrides | None = None

    @model_validator(mode="before")
    @classmethod
    def _fixed_fields(cls, data: Any) -> Any:
        """Say how to change what PATCH cannot, rather than pydantic's 'extra inputs', and
        refuse null: it would reach the worker's spec, where None is not a value."""
        if isinstance(data, dict):
            fixed = sorted(k for k in data if k in WorkerSpec.model_fields
                           and k not in cls.model_fields)
            if fixed:
                raise PydanticCustomError(
                    "fixed_field",
                    "{field} cannot be changed on a registered worker: DELETE the worker and "
                    "POST it again with the new value",
                    {"field": fixed[0]},
                )
            nulls = sorted(k for k, v in data.items() if v is None and k in cls.model_fields)
            if nulls:
                raise PydanticCustomError(
                    "null_field", "{field} cannot be null: give a value, or leave the field "
                    "out to keep the current one", {"field": nulls[0]})
        return data


PATCHABLE = frozenset(WorkerPatch.model_fields)


class DeclaredInFile(WorkerConflict):
    """The admin API may not change a worker the configuration file owns: the next reload
    would silently undo it."""


@dataclass(frozen=True, slots=True)
class Registered:
    """The workers one registration made (one per DP rank); `reached`: discovery got an answer.
    An unreached worker (one whose models were given) waits, unhealthy, for health checks."""

    workers: list[Worker]
    reached: bool


@dataclass(frozen=True, slots=True)
class _Registration:
    spec: WorkerSpec  # as declared or posted, before discovery
    declared_in: str | None  # the owning file; None: the admin API
    urls: tuple[str, ...]  # the workers it registered
    posted: bool = False  # POSTed to the admin API (what admin.state_file keeps)


class WorkerManager:
    def __init__(self, workers: WorkerRegistry, settings: DiscoverySettings,
                 health_checked: bool = True, pd_paired: bool = False,
                 keys_refused: str | None = None, state: StateFile | None = None) -> None:
        """`health_checked`: active health checks run, so a worker registered before it
        answered is admitted once it does; without them such a registration is refused.
        `pd_paired`: prefill and decode workers are paired (enable_igw); without it they are
        refused. `keys_refused`: why workers with an api_key may not be registered (the
        running ext_proc port does not authenticate its clients), None when they may: checked
        here, on the one path of the admin API, a config reload and discovery alike.
        `state`: where the admin API's workers are saved (admin.state_file); None: nowhere."""
        self.workers = workers
        self._settings = settings
        self._health_checked = health_checked
        self._pd_paired = pd_paired
        self._keys_refused = keys_refused
        self._client: httpx.AsyncClient | None = None
        self._registrations: dict[str, _Registration] = {}  # by spec url
        self._registration_of: dict[str, str] = {}  # worker url -> spec url
        self._state = state
        self._saving = asyncio.Lock()  # one write at a time, each of the state as it starts
        self._saved: list[SavedRegistration] | None = None  # what the file holds, once read
        self._completing: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._client = httpx.AsyncClient(verify=worker_tls())

    async def stop(self) -> None:
        for task in self._completing:
            task.cancel()
        await asyncio.gather(*self._completing, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()

    def complete_adopted(self, specs: Sequence[WorkerSpec]) -> None:
        """Discover in the background what adopted `specs` leave out that routing needs - the
        models (none declared means any model, and an empty /v1/models), a gRPC worker's
        tokenizer (without one it cannot be sent a chat) - as a POST or a reload does before
        registering. Discovery's own tries and backoff, then again after backoff_max_secs, until
        the engine answers or the adopted workers are gone (removed, or replaced by a reload). What
        is found fills only what the workers' specs still leave out, so a PATCH meanwhile
        stands; declared data-parallel ranks stay as declared."""
        for spec in specs:
            if _leaves_out(spec):
                task = asyncio.create_task(self._complete_adopted(spec))
                self._completing.add(task)
                task.add_done_callback(self._completing.discard)
                task.add_done_callback(_completed)

    async def _complete_adopted(self, spec: WorkerSpec) -> None:
        assert self._client is not None, "WorkerManager.start() was not awaited"
        adopted = self._group(spec.url)
        told = False
        while adopted and _same(self._group(spec.url), adopted):
            try:
                complete = await discover(spec, self._client, self._settings)
            except WorkerUnreachable as exc:
                if not told:
                    log.warning("a worker of the configuration: %s; what it leaves out "
                                "(models, tokenizer) is discovered once it answers", exc)
                    told = True
                await asyncio.sleep(self._settings.backoff_max_secs)
                continue
            if not _same(self._group(spec.url), adopted):
                return  # replaced meanwhile: the new registration discovers for itself
            found = {name: getattr(complete, name) for name in _DISCOVERED}
            for worker in adopted:
                gaps = {name: value for name, value in found.items()
                        if value and not getattr(worker.spec, name)}
                if gaps:
                    self.workers.replace_spec(worker, worker.spec.updated(**gaps))
            log.info("worker %s from the configuration serves %s", redact_url(spec.url),
                     ", ".join(complete.models)[:300])
            return

    # -- lookups ------------------------------------------------------------------------------

    def find(self, key: str) -> Worker:
        """A worker by url (as registered, or in any form WorkerSpec normalises) or by id."""
        worker = self.workers.get_by_url(key) or self.workers.get(key)
        if worker is None:
            try:
                worker = self.workers.get_by_url(WorkerSpec(url=key).url)
            except ValueError:
                worker = None
        if worker is None:
            raise UnknownWorker(f"no worker with url or id {redact_url(key)[:200]!r}")
        return worker

    def declared_in(self, worker: Worker) -> str | None:
        """The configuration file that owns `worker`; None when the admin API may change it."""
        registration = self._registrations.get(self._registration_of.get(worker.url, ""))
        return None if registration is None else registration.declared_in

    # -- the admin API's calls ----------------------------------------------------------------

    async def register(self, spec: WorkerSpec) -> Registered:
        """Check conflicts, discover what the spec leaves out, register (one per DP rank)."""
        registered = await self._register(spec, declared_in=None)
        await self._save()
        return registered

    async def change(self, key: str, patch: WorkerPatch) -> Worker:
        worker = self._api_owned(self.find(key))
        changes = patch.model_dump(exclude_unset=True)
        if changes.get("health") is not None:
            changes["health"] = {**worker.spec.health.model_dump(exclude_unset=True),
                                 **changes["health"]}
        self.workers.replace_spec(worker, worker.spec.updated(**changes))
        await self._save()
        return worker

    async def delete(self, key: str, timeout_secs: float) -> tuple[list[Worker], bool]:
        """Drain and remove the worker `key` names - or, named by the url or id it was
        registered with, every rank of a data-parallel worker; whether all went idle in time."""
        workers = [self._api_owned(worker) for worker in self._named(key)]
        for worker in workers:
            self.workers.set_draining(worker)
        await self._save()  # gone from the saved state already: a restart mid-drain keeps it gone
        drained = await asyncio.gather(*(self.drain(w, timeout_secs) for w in workers))
        return workers, all(drained)

    def _named(self, key: str) -> list[Worker]:
        """The ranks of the data-parallel registration whose url or id is `key`, else the one
        worker `find` names."""
        for registration in self._registrations.values():
            if len(expand_dp_ranks(registration.spec)) > 1 and key in (registration.spec.url,
                                                                      registration.spec.id):
                group = self._group(registration.spec.url)
                if group:
                    return group
        return [self.find(key)]

    def _api_owned(self, worker: Worker) -> Worker:
        path = self.declared_in(worker)
        if path is not None:
            raise DeclaredInFile(
                f"worker {worker.id} is declared in {path}: {_how_to_change(path)}; the admin "
                "API changes only the workers it added")
        return worker

    # -- the admin API's workers across restarts (admin.state_file) ---------------------------

    async def restore(self) -> None:
        """Register again the workers the admin API had added before a restart, as they were
        (discovery's answers and PATCHes kept, no call to the engines: health checks judge
        them as they judge the configuration's). Call it once the configuration's workers are
        in (declared or adopted): a saved worker the configuration now has (same url or id) is
        the configuration's, named in the log and dropped from the state.

        ConfigError naming admin.state_file when the file cannot be read, when a saved worker
        is one this picker's settings refuse (a role without enable_igw, a key without mutual
        TLS), or when the file cannot be written (it is written once here, so an unwritable
        path fails at start-up rather than at the first POST)."""
        if self._state is None:
            return
        path = self._state.path
        for saved in await asyncio.to_thread(self._state.read):
            holder = self._holder(saved)
            if holder is not None:
                log.warning("worker %s saved in %s is also in the configuration%s: the "
                            "configuration owns it now; dropped from %s",
                            redact_url(saved.spec.url), path, _owned_by(self.declared_in(holder)),
                            path)
                continue
            try:
                self._check_admissible(saved.spec)
            except ConfigError as exc:
                raise ConfigError("admin.state_file", f"{path}: worker "
                                  f"{redact_url(saved.spec.url)}: {exc}") from exc
            self._record(saved.spec, None, [self.workers.add(w) for w in saved.workers],
                         posted=True)
        try:
            await self._save(must=True)
        except OSError as exc:
            raise ConfigError("admin.state_file", f"cannot write {path}: {exc}") from exc

    def _holder(self, saved: SavedRegistration) -> Worker | None:
        """The registered worker holding a url or id of a saved registration, if any."""
        for spec in saved.workers:
            taken = self.workers.get_by_url(spec.url) or self.workers.get(spec.id or "")
            if taken is not None:
                return taken
        return None

    def _posted(self) -> list[SavedRegistration]:
        """The admin API's registrations as they stand; draining workers are left out."""
        saved = []
        for registration in self._registrations.values():
            if not registration.posted or registration.declared_in is not None:
                continue
            live = tuple(w.spec for url in registration.urls
                         if (w := self.workers.get_by_url(url)) is not None and not w.draining)
            if live:
                saved.append(SavedRegistration(registration.spec, live))
        return saved

    async def _save(self, must: bool = False) -> None:
        """Write the admin API's registrations if they changed since the last write, off the
        event loop (a write and two fsyncs take milliseconds, and routing shares the loop).
        A failure is logged (raised with `must`): the change stands in this process only.
        Nothing is written before `restore` has read the file (a reload's declare comes
        first), which would replace the saved workers with none."""
        if self._state is None or (self._saved is None and not must):
            return
        async with self._saving:
            posted = self._posted()
            if posted == self._saved and not must:
                return
            try:
                await asyncio.to_thread(self._state.write, posted)
            except OSError as exc:
                if must:
                    raise
                log.error("the admin API's workers could not be saved to %s (%s): this change "
                          "is lost at the next restart", self._state.path, exc)
                return
            self._saved = posted

    # -- the configuration file's call --------------------------------------------------------

    async def declare(self, path: str, specs: Sequence[WorkerSpec],
                      drain_timeout_secs: float = 30.0) -> int:
        """Make the workers `path` owns exactly `specs`, through the same path as the API;
        returns how many specs could not be applied.

        Unchanged workers are left alone; a change to patchable fields (priority, cost, labels,
        health) applies in place; any other change (id, models, dp_size...) drains the old
        workers and registers the new spec; workers no longer declared are drained. A spec that
        cannot be applied is logged and retried on the next reload.
        """
        wanted = {spec.url: spec for spec in specs}
        gone = [r for key, r in self._registrations.items()
                if r.declared_in == path and key not in wanted]
        jobs = [self._retire(r, drain_timeout_secs) for r in gone]
        jobs += [self._converge(spec, path, drain_timeout_secs) for spec in wanted.values()]
        refused = 0
        for spec_url, result in zip([r.spec.url for r in gone] + list(wanted),
                                    await asyncio.gather(*jobs, return_exceptions=True),
                                    strict=True):
            if isinstance(result, PickerError):
                log.error("worker %s from %s not applied: %s", spec_url, path, result)
                refused += 1
            elif isinstance(result, BaseException):
                raise result
        await self._save()  # the file may have taken workers over from the admin API
        return refused

    async def _converge(self, spec: WorkerSpec, path: str, drain_timeout_secs: float) -> None:
        registration = self._registrations.get(spec.url)
        group = self._group(spec.url)
        if not group:
            await self._register(spec, declared_in=path)
        elif registration is not None and registration.spec == spec:
            self._record(spec, path, group)  # unchanged (or taken over from the API)
        elif registration is None and [w.spec for w in group] == expand_dp_ranks(spec):
            self._record(spec, path, group)  # registered as declared before we knew of it
        elif registration is not None and _only_patchable_differ(registration.spec, spec):
            changes = {name: getattr(spec, name) for name in PATCHABLE}
            for worker in group:
                self.workers.replace_spec(worker, worker.spec.updated(**changes))
            self._record(spec, path, group)
        else:
            await asyncio.gather(*(self.drain(w, drain_timeout_secs) for w in group))
            await self._register(spec, declared_in=path)

    async def _retire(self, registration: _Registration, drain_timeout_secs: float) -> None:
        await asyncio.gather(*(self.drain(w, drain_timeout_secs)
                               for w in self._group(registration.spec.url)))

    # -- owners that know their workers -------------------------------------------------------

    def adopt(self, owner: str | None, specs: Sequence[WorkerSpec]) -> dict[str, Worker]:
        """Make the workers `owner` owns exactly `specs`, as given: no discovery and no
        drain, for owners that already know their workers and whose requests stop with them
        (LiteLLM's deployments; the configuration's workers at start-up, owner None: the
        admin API may change those unless a followed file takes them over). One worker per
        data-parallel rank, as a POST registers them. A changed spec applies in place under
        the worker's id; a spec whose url another owner holds is logged and skipped. Returns
        the owner's (first) worker by spec url."""
        wanted = {spec.url: spec for spec in specs}
        # None is the admin API's own: only ever added to here, never taken from.
        for registration in [r for r in self._registrations.values() if owner is not None
                             and r.declared_in == owner and r.spec.url not in wanted]:
            for worker in self._group(registration.spec.url):
                self.workers.remove(worker.url)
                self._forget(worker)
        adopted: dict[str, Worker] = {}
        for url, spec in wanted.items():
            try:
                adopted[url] = self._adopt_one(owner, spec)
            except (PickerError, ValueError) as exc:
                if owner is None:
                    raise  # the configuration's own: refused at start-up, naming the key
                log.warning("worker %s from %s not routed: %s", redact_url(url), owner, exc)
        return adopted

    def _adopt_one(self, owner: str | None, spec: WorkerSpec) -> Worker:
        if owner is not None:  # the configuration's were checked as it loaded (load_config)
            self._check_admissible(spec)
        group = self._group(spec.url)
        if not group:
            self._check_free(spec)
            group = [self.workers.add(rank) for rank in expand_dp_ranks(spec)]
        elif self.declared_in(group[0]) != owner and group[0].url in self._registration_of:
            raise WorkerConflict(f"worker {spec.url} is already registered"
                                 + _owned_by(self.declared_in(group[0])))
        elif len(group) == 1 and group[0].spec != spec.updated(id=group[0].id):
            self.workers.replace_spec(group[0], spec.updated(id=group[0].id))
        self._record(spec, owner, group)
        return group[0]

    # -- shared steps -------------------------------------------------------------------------

    def _check_admissible(self, spec: WorkerSpec) -> None:
        """What this picker refuses whoever registers it: a prefill or decode worker without
        enable_igw, a key the ext_proc port would hand to unauthenticated clients."""
        if spec.worker_type is not WorkerType.REGULAR and not self._pd_paired:
            raise ConfigError("worker_type", unpaired_role(spec.worker_type))
        if spec.api_key is not None and self._keys_refused is not None:
            raise ConfigError("api_key", f"refused: {self._keys_refused}")

    async def _register(self, spec: WorkerSpec, declared_in: str | None) -> Registered:
        self._check_admissible(spec)
        self._check_free(spec)  # before any network call: a conflict is not worth a wait
        complete, reached = await self._discover(spec)
        self._check_free(complete)  # discovery may have found dp_size; others may have won
        added: list[Worker] = []
        try:
            for rank_spec in expand_dp_ranks(complete):
                added.append(self.workers.add(rank_spec))
        except WorkerConflict:
            for worker in added:  # all ranks or none
                self.workers.remove(worker.url)
            raise
        if not reached:
            for worker in added:
                self.workers.set_healthy(worker, False)
        self._record(spec, declared_in, added, posted=declared_in is None)
        return Registered(added, reached)

    async def _discover(self, spec: WorkerSpec) -> tuple[WorkerSpec, bool]:
        """The completed spec, and whether the worker answered. With `models` given, one try:
        a worker that is not up yet registers unhealthy and health checks bring it in."""
        assert self._client is not None, "WorkerManager.start() was not awaited"
        if not spec.models or not self._health_checked:
            return await discover(spec, self._client, self._settings), True
        try:
            return await discover(spec, self._client, self._settings, attempts=1), True
        except WorkerUnreachable:
            return spec, False

    def _check_free(self, spec: WorkerSpec) -> None:
        for candidate in (spec, *expand_dp_ranks(spec)):
            taken = self.workers.get_by_url(candidate.url)
            if taken is not None or self._group(candidate.url):
                raise WorkerConflict(f"worker {candidate.url} is already registered"
                                     + _owned_by(self.declared_in(taken) if taken else None))
            taken = self.workers.get(candidate.id or "")
            if taken is not None:
                raise WorkerConflict(f"worker id {candidate.id!r} is already registered"
                                     + _owned_by(self.declared_in(taken)))

    def _group(self, spec_url: str) -> list[Worker]:
        """The registered workers for a spec url: the worker itself, or its DP ranks."""
        single = self.workers.get_by_url(spec_url)
        if single is not None:
            return [single]
        return [w for w in self.workers.workers() if w.spec.dp_base_url == spec_url]

    def _record(self, spec: WorkerSpec, declared_in: str | None,
                workers: Sequence[Worker], posted: bool = False) -> None:
        urls = tuple(w.url for w in workers)
        self._registrations[spec.url] = _Registration(spec, declared_in, urls, posted)
        for url in urls:
            self._registration_of[url] = spec.url

    def _forget(self, worker: Worker) -> None:
        spec_url = self._registration_of.pop(worker.url, None)
        registration = self._registrations.get(spec_url or "")
        if registration is None:
            return
        urls = tuple(u for u in registration.urls if u != worker.url)
        if urls:
            self._registrations[registration.spec.url] = _Registration(
                registration.spec, registration.declared_in, urls, registration.posted)
        else:
            del self._registrations[registration.spec.url]

    def served_adapter(self, worker: Worker, adapter: str, base: str) -> None:
        """The engine behind `worker` now serves LoRA `adapter` of `base` (the picker loaded it
        there, picker.fleet.lora_loading): every worker of that engine (each data-parallel
        rank) lists it. What the engine serves is the engine's to say, so this changes the
        spec whoever owns the worker; a config reload that drops it costs one load request,
        which the engine answers "already loaded"."""
        for same in self.workers.workers():
            if same.spec.network_url == worker.spec.network_url \
                    and adapter not in same.spec.adapters:
                self.workers.replace_spec(same, same.spec.updated(
                    adapters={**same.spec.adapters, adapter: base}))

    async def drain(self, worker: Worker, timeout_secs: float) -> bool:
        """Stop new requests, wait for in-flight ones (bounded), then remove.

        Returns whether the worker went idle in time; it is removed either way, and requests
        still running finish normally (their slots are released on the removed record).
        """
        self.workers.set_draining(worker)
        deadline = time.monotonic() + timeout_secs
        while worker.in_flight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        drained = worker.in_flight == 0
        if self.workers.get_by_url(worker.url) is worker:
            self.workers.remove(worker.url)
            self._forget(worker)
        return drained


# What `complete_adopted` fills in: what routing needs and discovery finds (dp_size excepted:
# the adopted ranks are the declared ones).
_DISCOVERED = ("models", "model_id", "adapters", "tokenizer_path")


def _leaves_out(spec: WorkerSpec) -> bool:
    return not spec.models or (spec.connection_mode is ConnectionMode.GRPC
                               and spec.tokenizer_path is None)


def _same(group: list[Worker], adopted: list[Worker]) -> bool:
    """The same registered workers (objects), not equal specs: a PATCH keeps a worker."""
    return len(group) == len(adopted) and all(a is b for a, b in zip(group, adopted, strict=True))


def _completed(task: asyncio.Task[None]) -> None:
    """A background discovery's end: a failure the loop does not expect is logged, not lost."""
    if not task.cancelled() and task.exception() is not None:
        log.error("background discovery of a configuration worker failed",
                  exc_info=task.exception())


def _only_patchable_differ(old: WorkerSpec, new: WorkerSpec) -> bool:
    return (old.model_dump(exclude=set(PATCHABLE)) == new.model_dump(exclude=set(PATCHABLE))
            and old.api_key == new.api_key)


def _how_to_change(owner: str) -> str:
    """Owners are a configuration file's path, a discovery source (`kubernetes:ns/pool`,
    `dns:name`) or LiteLLM's model list (`litellm`): each is changed where it lives."""
    if owner.startswith("kubernetes:"):
        return "change the pods or the InferencePool (the picker follows them)"
    if owner.startswith("dns:"):
        return "change the DNS records (the picker polls them)"
    if owner == "litellm":
        return "change LiteLLM's model list (the picker follows it)"
    return "edit that file to change or remove it (it is re-read on change and on SIGHUP)"


def _owned_by(path: str | None) -> str:
    return "" if path is None else f" (declared in {path})"
