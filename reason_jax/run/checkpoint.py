"""Orbax checkpoints that resume exactly, and the model-only format of `import-hf`.

A training checkpoint (`WORKDIR/checkpoints/<step>/`) holds two items:
  * `state`: parameters and optimizer state (arrays, written collectively by all hosts);
  * `meta`: JSON: step, phase (sft | rl), PRNG key data, the data iterator's state, the
    resolved config, and counters the loop needs to continue bit-for-bit.
Restoring takes abstract arrays carrying the *current* shardings, so a checkpoint written on
one mesh restores onto another. A latest checkpoint that fails to restore (a process killed
mid-write, a truncated file) is skipped with a warning and the one before it is used.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from reason_jax import paths

log = logging.getLogger(__name__)

MODEL_CONFIG = "model_config.json"


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) describing `tree`, as restore targets."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        tree)


class Checkpointer:
    def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True):
        self.directory = paths.as_path(workdir) / "checkpoints"  # local or gs://
        # keep_period: step 0 (the policy RL starts from, i.e. the SFT result) is never
        # garbage-collected, so `eval --step 0` can always measure what RL added.
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, keep_period=1 << 62, enable_async_checkpointing=async_save,
            create=True, cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state", "meta"))

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def save(self, step: int, state: Any, meta: dict[str, Any], *, force: bool = False) -> bool:
        return self.manager.save(
            step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                          meta=ocp.args.JsonSave(meta)), force=force)

    def restore(self, abstract_state: Any, step: int | None = None):
        """Return (step, state, meta) of the newest restorable checkpoint, or None."""
        if step is not None and step not in self.steps():
            raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory}; "
                                    f"available: {self.steps()}")
        candidates = [step] if step is not None else self.steps()[::-1]
        for s in candidates:
            try:
                out = self.manager.restore(
                    s, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                               meta=ocp.args.JsonRestore()))
                return s, out["state"], out["meta"]
            except Exception as e:  # noqa: BLE001 - any damage means: try the previous one
                if step is not None:
                    raise
                log.warning("checkpoint %d in %s cannot be restored (%s: %s); trying the "
                            "previous one", s, self.directory, type(e).__name__,
                            str(e).splitlines()[0][:200])
        if candidates:
            # Never start over on top of a run we failed to read: that would overwrite it.
            raise RuntimeError(f"none of the checkpoints {candidates} in {self.directory} can be "
                               f"restored with this config (see the warnings above)")
        return None

    def restore_meta(self, step: int) -> dict[str, Any]:
        out = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return out["meta"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


# -- model-only checkpoints (import-hf output, or params pulled out of a workdir) -------------

def save_model(out_dir, params: Any, model_config: dict[str, Any],
               extra: dict[str, Any] | None = None) -> None:
    """`out_dir/params` (Orbax) + `out_dir/model_config.json`; local or gs://."""
    out = paths.as_path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "params"
    if path.exists():
        path.rmtree()
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path, params)
        ckptr.wait_until_finished()
    if jax.process_index() == 0:
        paths.write_text_atomic(out / MODEL_CONFIG, json.dumps(
            {**model_config, **({"extra": extra} if extra else {})}, indent=2))


def read_model_config(path) -> dict[str, Any]:
    cfg_path = paths.as_path(path) / MODEL_CONFIG
    if not cfg_path.exists():
        raise FileNotFoundError(f"{path} has no {MODEL_CONFIG} (is it an import-hf output or a "
                                f"reason-jax workdir?)")
    return json.loads(cfg_path.read_text())


def load_model_params(path, abstract_params: Any) -> Any:
    """Params from an import-hf dir (`path/params`) or a workdir's latest checkpoint."""
    params_dir = paths.as_path(path) / "params"
    if params_dir.is_dir():
        with ocp.StandardCheckpointer() as ckptr:
            return ckptr.restore(params_dir, abstract_params)
    ckpt_dir = paths.as_path(path) / "checkpoints"
    if ckpt_dir.is_dir():
        mngr = ocp.CheckpointManager(ckpt_dir, item_names=("state", "meta"))
        for step in sorted(mngr.all_steps(), reverse=True):
            try:
                meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
                del meta
                restored = mngr.restore(step, args=ocp.args.Composite(
                    state=ocp.args.PyTreeRestore(
                        item={"params": abstract_params},
                        restore_args=jax.tree.map(_restore_arg, {"params": abstract_params}),
                        partial_restore=True)))
                return restored["state"]["params"]
            except Exception as e:  # noqa: BLE001
                log.warning("checkpoint %d unreadable (%s); trying the previous one", step, e)
        raise FileNotFoundError(f"no restorable checkpoint under {ckpt_dir}")
    raise FileNotFoundError(f"{path} has neither params/ (import-hf output) nor checkpoints/")


def _restore_arg(x):
    return ocp.ArrayRestoreArgs(sharding=x.sharding, global_shape=x.shape, dtype=x.dtype) \
        if getattr(x, "sharding", None) is not None else ocp.RestoreArgs(restore_type=np.ndarray)
