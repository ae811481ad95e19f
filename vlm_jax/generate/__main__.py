"""python -m vlm_jax.generate: one reply from a checkpoint, for a text prompt with images or a video.

  python -m vlm_jax.generate --checkpoint=runs/synthetic_tiny --prompt="How many circles?" --image=a.png
      [--image=b.png ...] [--video=frames_dir | --video=clip.npy --fps=2] [--preset=greedy|instruct|thinking]
      [--max_new_tokens=256] [--stream] [--system="..."] [--processor='{"min_pixels": 4096, "max_pixels": 4096}']
      [--weights=float32|bfloat16|int8]

--checkpoint: a params dir or a training workdir (see `vlm_jax.inference.loading`). Media come before
the prompt text in the user turn, images first. A video is a directory of frame images (sorted by
name) or a .npy array uint8 [T, H, W, 3], at --fps frames per second; the processor samples it.
With --preset=thinking the Thinking template is used and the reply is split into reasoning and answer.
--weights: the format the weights are held in while generating (`vlm_jax.inference.quantize`): float32
(as stored), bfloat16, or int8 (weight-only, one scale per output channel).
Errors (missing or unreadable image, unknown preset or weights format, prompt over the model's budget) print one line
and exit with status 2.
"""

from __future__ import annotations

import sys

import numpy as np
from absl import flags

from vlm_jax import cli

FLAGS = flags.FlagValues()
flags.DEFINE_string("checkpoint", None, "params dir or training workdir", flag_values=FLAGS)
flags.DEFINE_string("prompt", None, "the user's text", flag_values=FLAGS)
flags.DEFINE_multi_string("image", [], "an image file (repeatable)", flag_values=FLAGS)
flags.DEFINE_multi_string("video", [], "a frame directory or .npy [T,H,W,3] (repeatable)",
                          flag_values=FLAGS)
flags.DEFINE_float("fps", 2.0, "frame rate of --video", flag_values=FLAGS)
flags.DEFINE_string("system", None, "a system prompt", flag_values=FLAGS)
flags.DEFINE_string("preset", "greedy", "greedy | instruct | thinking", flag_values=FLAGS)
flags.DEFINE_integer("max_new_tokens", 256, "tokens to generate at most", flag_values=FLAGS)
flags.DEFINE_integer("seed", 0, "sampling seed", flag_values=FLAGS)
flags.DEFINE_bool("stream", False, "print tokens as they are generated", flag_values=FLAGS)
flags.DEFINE_string("processor", None,
                    "processor settings as JSON (default: the checkpoint's processor_config.json)",
                    flag_values=FLAGS)
flags.DEFINE_string("weights", "float32", "float32 | bfloat16 | int8 (weight-only)", flag_values=FLAGS)
flags.mark_flags_as_required(["checkpoint", "prompt"], flag_values=FLAGS)


def _generate() -> int:
    from vlm_jax.data import processor as proc
    from vlm_jax.eval.harness import decode_reply
    from vlm_jax.inference import generate as generate_lib
    from vlm_jax.inference.loading import load_model, processor_config_for
    from vlm_jax.inference.prompt import batch_prompts, build_messages, build_prompt, check_budget, load_video
    from vlm_jax.inference.quantize import check_weights, prepare_weights
    from vlm_jax.inference.sampling import get_preset
    from vlm_jax.inference.thinking import split_thinking

    preset, max_new_tokens = FLAGS.preset, FLAGS.max_new_tokens
    get_preset(preset)  # fail on a typo before anything is loaded
    check_weights(FLAGS.weights, "--weights")
    if max_new_tokens < 1:
        raise ValueError(f"--max_new_tokens must be >= 1, got {max_new_tokens}")
    override = None if FLAGS.processor is None else cli.parse_json_object(FLAGS.processor, "processor settings")
    images = [proc.load_image(p) for p in FLAGS.image]
    videos = [load_video(v, FLAGS.fps) for v in FLAGS.video]
    model_config, params, tokenizer = load_model(FLAGS.checkpoint)
    params = prepare_weights(params, FLAGS.weights)
    thinking = preset == "thinking"
    messages = build_messages(FLAGS.prompt, len(images), len(videos), FLAGS.system)
    prompt = build_prompt(messages, images, videos, tokenizer, processor_config_for(FLAGS.checkpoint, override),
                          thinking=thinking)
    check_budget(len(prompt), max_new_tokens, model_config)
    stop = (tokenizer.im_end_id, tokenizer.pad_id)

    callback = None
    if FLAGS.stream:
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

    out = generate_lib.generate(model_config, params, **batch_prompts([prompt]), preset=preset,
                                max_new_tokens=max_new_tokens, stop_tokens=stop,
                                pad_token_id=tokenizer.pad_id, rng=FLAGS.seed, callback=callback)
    reply = decode_reply(tokenizer, out.sequences()[0], stop)
    if FLAGS.stream:
        print(reply[len(shown[0]):] if reply.startswith(shown[0]) else "", flush=True)
    if thinking:
        reasoning, answer = split_thinking(reply)  # the prompt opened the think block
        print(f"[reasoning]\n{reasoning}\n[answer]\n{answer}")
    elif not FLAGS.stream:
        print(reply)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Runs the CLI on `argv` (without the program name); returns the exit status (2 with a one-line
    message on bad inputs)."""
    return cli.run(FLAGS, _generate, argv, doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())
