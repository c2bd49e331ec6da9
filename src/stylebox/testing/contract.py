"""The contract as a pytest base class: subclass it, name the plugin, give quick params.

::

    from stylebox.testing import PluginContract

    class TestPosterizeContract(PluginContract):
        plugin = "posterize"
        params = {"bits": 2}

Each check becomes one test (``test_contract[cancellation]``...). Checks that need a
capability the plugin does not declare are skipped with the reason; checks listed in
``expected_failures`` are expected to fail (and the run fails if they pass). A plugin that
does not load fails ``test_contract[discoverable]`` with the reason, and every other check
is skipped saying so.
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any, ClassVar

import pytest

from stylebox.plugins.api import Plugin
from stylebox.testing.checks import (
    CHECKS,
    NOT_LOADED,
    REALISTIC_SIZE,
    TIME_LIMIT,
    Check,
    ContractCase,
    ContractFailure,
    ContractSkip,
    ContractTimeout,
    SaidOnce,
    after_a_hang,
    skip_reason,
    unknown_checks,
)

_KIT = Path(__file__).parent


class PluginContract:
    """Base class of a plugin's contract tests; override the class attributes, or the
    ``contract_case`` fixture for full control."""

    plugin: ClassVar[str | type[Plugin[Any]]]
    """The entry-point name (or the class) of the plugin under test."""
    params: ClassVar[dict[str, Any]] = {}
    """Params that keep one ``process`` call quick (tiny sizes, few steps)."""
    long_params: ClassVar[dict[str, Any] | None] = None
    """Params for a run long enough to cancel midway (default: ``params``)."""
    invalid_params: ClassVar[list[dict[str, Any]]] = []
    """Params that must be refused, beyond the kit's own wrong values."""
    effective_params: ClassVar[list[dict[str, Any]]] = []
    """Changes to ``params`` each of which must change the result (``{"bits": 4}``)."""
    expected_failures: ClassVar[dict[str, str]] = {}
    """Check name -> why the plugin is known to fail it."""
    device: ClassVar[str] = "cpu"
    """The device the plugin runs on in the checks (``runtime.device``): ``"cuda"`` to
    prove a GPU plugin on a GPU."""
    cancel_within: ClassVar[float] = 10.0
    """Seconds a plugin may keep running once its job is cancelled."""
    batch_tolerance: ClassVar[int] = 2
    """Largest per-pixel difference allowed between a batched and a single result."""
    time_limit: ClassVar[float] = TIME_LIMIT
    """Seconds any one call into the plugin (starting it, ``process``, ``close``) may take."""
    realistic_size: ClassVar[tuple[int, int] | None] = REALISTIC_SIZE
    """Also observed at this size when quick enough (``None``: only at 64x48)."""

    _hung: ClassVar[dict[type, str]] = {}
    """Per test class, the check whose call into the plugin did not return: the checks
    after it are skipped (its thread still runs; each would wait out the limit again)."""

    @pytest.fixture
    def contract_case(self, tmp_path: Path) -> ContractCase:
        if (wrong := unknown_checks(self.expected_failures)) is not None:
            pytest.fail(wrong, pytrace=False)
        return ContractCase(
            plugin=self.plugin,
            workdir=tmp_path,
            params=dict(self.params),
            long_params=self.long_params,
            invalid_params=list(self.invalid_params),
            effective_params=list(self.effective_params),
            device=self.device,
            cancel_within=self.cancel_within,
            batch_tolerance=self.batch_tolerance,
            time_limit=self.time_limit,
            realistic_size=self.realistic_size,
        )

    @pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.name)
    def test_contract(
        self, check: Check, contract_case: ContractCase, request: pytest.FixtureRequest
    ) -> None:
        if check.name != "discoverable":
            try:
                contract_case.cls  # noqa: B018 - one that does not load fails once
            except ContractFailure:
                pytest.skip(NOT_LOADED)
        reason = skip_reason(check, contract_case)
        if reason is not None:
            pytest.skip(reason)
        if check.name in self.expected_failures:
            # strict: a check that starts passing must come off the list
            request.applymarker(
                pytest.mark.xfail(reason=self.expected_failures[check.name], strict=True)
            )
        hung = PluginContract._hung.get(type(self))
        if hung is not None:
            pytest.skip(after_a_hang(hung))
        finding: ContractFailure | None = None
        try:
            check.run(contract_case)
        except ContractSkip as exc:
            pytest.skip(str(exc))
        except ContractFailure as exc:
            if isinstance(exc, SaidOnce) and (why := exc.elsewhere(check.name)):
                pytest.skip(why)
            if isinstance(exc, ContractTimeout):
                PluginContract._hung[type(self)] = check.name
            finding = exc
        if finding is not None:
            # The kit's finding says what is wrong and what to do: first, not below the
            # kit's own frames, which buried it; then the plugin's exception, if it raised
            # one, as Python prints it.
            cause = finding.__cause__
            trace = _plugin_trace(cause) if cause is not None else ""
            pytest.fail(f"{finding}\n\n{trace}".rstrip(), pytrace=False)


def _plugin_trace(error: BaseException) -> str:
    """``error``'s traceback as Python prints it, from the first frame outside the kit:
    the plugin's code and what it called."""
    frames = error.__traceback__
    while frames is not None and Path(frames.tb_frame.f_code.co_filename).parent == _KIT:
        frames = frames.tb_next
    return "".join(traceback.format_exception(type(error), error, frames))
