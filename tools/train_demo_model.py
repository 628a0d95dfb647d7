"""Train the demo model shipped in qfair/assets/ on the built-in synthetic benchmark.

    python tools/train_demo_model.py --out qfair/assets/demo_mobilefacenet.pt
    python tools/train_demo_model.py --out qfair/assets/demo_mobilefacenet.pt --record-only  # re-evaluate only

Reproducible: seeded data (fresh renders of the imbalanced training split every step), seeded init,
fixed step count; resumable (``--resume``) from the periodic checkpoint in ``--work``. Writes the
float16 state dict (a few MB) and a JSON training record beside it. Everything it learns from is
synthetic: the model is for demonstrating the mechanism, not for real faces.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="mobilefacenet")
    ap.add_argument("--embedding-size", type=int, default=128)
    ap.add_argument("--width", type=int, default=None, help="iresnet width (small iresnet demo model)")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--n-ids", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--head", default="cosface")
    ap.add_argument("--scale", type=float, default=32.0)
    ap.add_argument("--margin", type=float, default=0.3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default="runs/train_demo")
    ap.add_argument("--out", default="qfair/assets/demo_mobilefacenet.pt")
    ap.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--record-only", action="store_true",
                    help="no training: evaluate the shipped --out model again with this qfair and replace the "
                         "'verification' block of its JSON record (the training facts stay as recorded)")
    args = ap.parse_args()
    if args.record_only:
        refresh_record(args.out, args.arch, args.seed)
        return

    from qfair.data.builtin import make_train
    from qfair.models import create_model
    from qfair.train.heads import create_head
    from qfair.utils.errors import QfairError
    from qfair.utils.io import atomic_torch_save, atomic_write_json, atomic_write_text, output_file, safe_torch_load

    try:  # a bad --out fails now, not after the training
        output_file(args.out, mkdir=True)
    except (QfairError, OSError) as exc:
        ap.error(f"--out {args.out}: {exc}")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    kw = ({"embedding_size": args.embedding_size} if args.arch == "mobilefacenet"
          else {"num_features": args.embedding_size})
    if args.width:
        kw["width"] = args.width
    model = create_model(args.arch, **kw)
    split = make_train(seed=args.seed, n_ids=args.n_ids, imgs_per_id=1)  # identities; images rendered per step
    head = create_head(args.head, args.embedding_size, split.num_classes, s=args.scale, m=args.margin)
    params = [p for p in list(model.parameters()) + list(head.parameters()) if p.requires_grad]
    opt = torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    warm = max(1, args.steps // 20)

    def lr_at(step: int) -> float:
        if step < warm:
            return args.lr * (step + 1) / warm
        return 0.5 * args.lr * (1 + math.cos(math.pi * (step - warm) / max(1, args.steps - warm)))

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    ckpt_path = work / "last.pt"
    start, log = 0, []
    if args.resume and ckpt_path.exists():
        state = safe_torch_load(ckpt_path)
        model.load_state_dict(state["model"])
        head.load_state_dict(state["head"])
        opt.load_state_dict(state["opt"])
        start = int(state["step"])
        log = json.loads((work / "log.json").read_text()) if (work / "log.json").exists() else []
        print(f"resumed at step {start}")
    model.train().to(memory_format=torch.channels_last)
    batches = split.stream(batch_size=args.batch_size, steps=args.steps, seed=args.seed)
    t0 = time.time()
    for step, (x, y) in enumerate(batches):
        if step < start:
            continue  # the stream is a pure function of (seed, step): skipping keeps resume exact
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        loss = head(model(x.contiguous(memory_format=torch.channels_last)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        log.append({"step": step, "loss": round(loss.item(), 4), "lr": round(lr_at(step), 5)})
        if step % 10 == 0:
            rate = (step + 1 - start) * args.batch_size / (time.time() - t0)
            print(f"step {step}/{args.steps} loss {loss.item():.3f} lr {lr_at(step):.4f} {rate:.1f} img/s", flush=True)
        if (step + 1) % 50 == 0 or step + 1 == args.steps:
            atomic_torch_save({"model": model.state_dict(), "head": head.state_dict(), "opt": opt.state_dict(),
                               "step": step + 1}, ckpt_path)
            atomic_write_text(work / "log.json", json.dumps(log))  # read back by --resume

    model.eval()
    sd = {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    atomic_torch_save(sd, args.out, mkdir=True)
    # quick record of the float model on the default built-in verification split (no flip)
    from qfair.models import load_model

    record = {"arch": args.arch, "model_kwargs": kw, "args": vars(args),
              "train_images_seen": args.steps * args.batch_size, "threads": torch.get_num_threads(),
              "final_loss": log[-1]["loss"] if log else None, "wall_seconds_last_session": round(time.time() - t0, 1),
              "torch": torch.__version__, "synthetic": True}
    record.update(_verification(load_model(args.out, arch=args.arch).eval(), args.seed))
    atomic_write_json(Path(args.out).with_suffix(".json"), record)
    print(json.dumps({k: v for k, v in record.items() if k != "verification"}, indent=1))


def _verification(model: torch.nn.Module, seed: int) -> dict:
    """{"verification": the float model on the default built-in verification split (no flip), "evaluated_with":
    the qfair version}, or {"verification_error": ...}: evaluation is a courtesy here; the demo evaluates
    properly."""
    import qfair
    from qfair.data.builtin import make_verification
    from qfair.eval import evaluate

    try:
        res = evaluate(model, make_verification(seed=seed + 1000), flip=False)
    except Exception as exc:  # noqa: BLE001 - recorded instead
        return {"verification_error": repr(exc)}
    return {"verification": res.to_dict(), "evaluated_with": f"qfair {qfair.__version__}"}


def refresh_record(out: str, arch: str, seed: int) -> None:
    """Evaluate the shipped model ``out`` again and replace its record's verification block (atomically)."""
    from qfair.models import load_model
    from qfair.utils.io import atomic_write_json

    path = Path(out).with_suffix(".json")
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"{path}: cannot read the training record ({exc}); train the model again without "
                         "--record-only") from None
    arch = record.get("arch", arch)
    seed = int(record.get("args", {}).get("seed", seed))
    record.pop("verification_error", None)
    record.update(_verification(load_model(out, arch=arch).eval(), seed))
    atomic_write_json(path, record)
    print(f"{path}: verification block re-evaluated ({record.get('evaluated_with', 'failed')})")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
