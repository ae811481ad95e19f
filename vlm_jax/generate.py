"""python -m vlm_jax.generate: one reply from a checkpoint, for a text prompt with images or a video.

  python -m vlm_jax.generate --checkpoint=runs/synthetic_tiny --prompt="How many circles?" --image=a.png
      [--image=b.png ...] [--video=frames_dir | --video=clip.npy --fps=2] [--preset=greedy|instruct|thinking]
      [--max_new_tokens=256] [--stream] [--system="..."] [--processor='{"min_pixels": 4096, "max_pixels": 4096}']

--checkpoint: a params dir or a training workdir (see `vlm_jax.inference.loading`). Media come before
the prompt text in the user turn, images first. A video is a directory of frame images (sorted by
name) or a .npy array uint8 [T, H, W, 3], at --fps frames per second; the processor samples it.
With --preset=thinking the Thinking template is used and the reply is split into reasoning and answer.
Errors (missing or unreadable image, unknown preset, prompt over the model's budget) print one line
and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from vlm_jax.data import processor as proc

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def load_video(path: str | Path, fps: float) -> dict:
    """`{"frames": uint8 [T, H, W, 3], "fps": fps}` from a directory of frame images or a .npy file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"video not found: {path}")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"video directory {path} holds no frame images ({', '.join(IMAGE_SUFFIXES)})")
        frames = [np.asarray(proc.load_image(f)) for f in files]
        if len({f.shape for f in frames}) > 1:
            raise ValueError(f"the frames in {path} differ in size: {sorted({f.shape for f in frames})}")
        frames = np.stack(frames)
    elif path.suffix == ".npy":
        try:
            frames = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read video array {path}: {e}") from e
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or not frames.shape[0]:
            raise ValueError(f"{path}: a video array must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    else:
        raise ValueError(f"unsupported video {path}: give a directory of frame images or a .npy [T, H, W, 3] "
                         "array (decode video files to frames first)")
    if not fps > 0:
        raise ValueError(f"--fps must be positive, got {fps}")
    return {"frames": frames, "fps": float(fps)}


def build_messages(prompt: str, n_images: int, n_videos: int, system: str | None = None) -> list[dict]:
    """A single user turn: the images, then the videos, then the prompt text (after an optional system turn)."""
    content = [{"type": "image"}] * n_images + [{"type": "video"}] * n_videos + [{"type": "text", "text": prompt}]
    messages = [{"role": "system", "content": system}] if system else []
    return [*messages, {"role": "user", "content": content}]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m vlm_jax.generate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="params dir or training workdir")
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--image", action="append", default=[], help="an image file (repeatable)")
    ap.add_argument("--video", action="append", default=[], help="a frame directory or .npy [T,H,W,3] (repeatable)")
    ap.add_argument("--fps", type=float, default=2.0, help="frame rate of --video")
    ap.add_argument("--system", default=None, help="a system prompt")
    ap.add_argument("--preset", default="greedy", help="greedy | instruct | thinking")
    ap.add_argument("--max_new_tokens", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    ap.add_argument("--processor", default=None,
                    help="processor settings as JSON (default: the checkpoint's processor_config.json)")
    return ap.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    from vlm_jax.eval.harness import decode_reply
    from vlm_jax.inference import generate as generate_lib
    from vlm_jax.inference.loading import load_model, processor_config_for
    from vlm_jax.inference.prompt import batch_prompts, build_prompt, check_budget
    from vlm_jax.inference.sampling import get_preset
    from vlm_jax.inference.thinking import split_thinking

    get_preset(args.preset)  # fail on a typo before anything is loaded
    if args.max_new_tokens < 1:
        raise ValueError(f"--max_new_tokens must be >= 1, got {args.max_new_tokens}")
    images = [proc.load_image(p) for p in args.image]
    videos = [load_video(v, args.fps) for v in args.video]
    model_config, params, tokenizer = load_model(args.checkpoint)
    thinking = args.preset == "thinking"
    prompt = build_prompt(build_messages(args.prompt, len(images), len(videos), args.system), images, videos,
                          tokenizer, processor_config_for(args.checkpoint, args.processor), thinking=thinking)
    check_budget(len(prompt), args.max_new_tokens, model_config)
    stop = (tokenizer.im_end_id, tokenizer.pad_id)

    callback = None
    if args.stream:
        generated, shown = [], [""]

        def callback(step: int, tokens: np.ndarray) -> None:
            # Decode everything so far and print the new suffix. A character may span several byte
            # tokens: a trailing U+FFFD is an incomplete one, held back until the next token.
            if generated and generated[-1] in stop:
                return
            generated.append(int(tokens[0]))
            text = decode_reply(tokenizer, generated, stop).rstrip("\ufffd")
            if text.startswith(shown[0]):
                print(text[len(shown[0]):], end="", flush=True)
                shown[0] = text

    out = generate_lib.generate(model_config, params, **batch_prompts([prompt]), preset=args.preset,
                                max_new_tokens=args.max_new_tokens, stop_tokens=stop,
                                pad_token_id=tokenizer.pad_id, rng=args.seed, callback=callback)
    reply = decode_reply(tokenizer, out.sequences()[0], stop)
    if args.stream:
        print(reply[len(shown[0]):] if reply.startswith(shown[0]) else "", flush=True)
    if thinking:
        reasoning, answer = split_thinking(reply)  # the prompt opened the think block
        print(f"[reasoning]\n{reasoning}\n[answer]\n{answer}")
    elif not args.stream:
        print(reply)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Runs the CLI; returns the exit status (2 with a one-line message on bad inputs)."""
    from vlm_jax.inference.loading import run_cli

    return run_cli(parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
