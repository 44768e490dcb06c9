"""Generate text from a trained run.

    python -m kerasllm.recipes.generate --model RUN_DIR --prompt TEXT [--max-new-tokens N]
                                        [--temperature T] [--top-k K] [--top-p P] [--seed S]
                                        [--stop TEXT ...] [--num-beams N [--length-penalty A]]
                                        [--chat]

`--chat` renders the prompt as a user message with the model's chat template (a chat
checkpoint's `tokenizer_config.json` `chat_template`), generates the assistant's reply and
stops at the template's end-of-turn token; only the reply is printed.
"""

import argparse
import math
import sys

from kerasllm.recipes.cli import run_cli


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m kerasllm.recipes.generate",
        description="Print a continuation of a prompt from a trained run directory.",
    )
    parser.add_argument("--model", required=True, help="run directory written by the pretrain recipe")
    parser.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    parser.add_argument("--max-new-tokens", type=int, default=200, help="tokens to generate (default 200)")
    parser.add_argument("--temperature", type=float, default=0.8, help="0 is greedy (default 0.8)")
    parser.add_argument("--top-k", type=int, default=40, help="sample among the k likeliest; 0: all (default 40)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass; 1: off (default 1.0)")
    parser.add_argument("--seed", type=int, default=None, help="random seed for repeatable samples")
    parser.add_argument("--stop", action="append", default=[], metavar="TEXT",
                        help="end the text before this string (repeat for several)")
    parser.add_argument("--num-beams", type=int, default=1,
                        help="beam search with N beams when N > 1 (deterministic; printed at the end)")
    parser.add_argument("--length-penalty", type=float, default=1.0,
                        help="beam search: rank beams by log-probability / length ** A (default 1.0)")
    parser.add_argument("--chat", action="store_true",
                        help="send the prompt as a user message through the model's chat template and print "
                             "the assistant's reply (it ends at the template's end-of-turn token)")
    parser.add_argument("--no-stream", action="store_true",
                        help="print the text at the end instead of as it comes (a GPT's --max-new-tokens "
                             "is then capped at its context)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    from kerasllm.errors import ConfigError

    if args.max_new_tokens < 0:
        raise ConfigError(f"--max-new-tokens {args.max_new_tokens}: expected 0 or more")
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise ConfigError(f"--temperature {args.temperature}: expected a finite number >= 0 (0: greedy)")
    if args.top_k < 0:
        raise ConfigError(f"--top-k {args.top_k}: expected 0 (all tokens) or more")
    if not 0 < args.top_p <= 1:  # also false for nan
        raise ConfigError(f"--top-p {args.top_p}: expected a number in (0, 1]")

    if args.num_beams < 1:
        raise ConfigError(f"--num-beams {args.num_beams}: expected 1 or more")

    from kerasllm.generation import Generator, StopStrings
    from kerasllm.training import load_run

    _, tokenizer, model = load_run(args.model)
    text, prompt_ids, stop_ids = _prompt(args, tokenizer)
    generator = Generator(model, tokenizer)
    if args.num_beams > 1:
        try:
            if args.chat:
                out = generator.generate([prompt_ids], args.max_new_tokens, num_beams=args.num_beams,
                                         length_penalty=args.length_penalty, stop_ids=stop_ids)
                text = StopStrings(args.stop).cut(_reply(tokenizer, out[0][len(prompt_ids):], stop_ids))
            else:
                text = generator.generate(args.prompt, args.max_new_tokens, num_beams=args.num_beams,
                                          length_penalty=args.length_penalty, stop=args.stop)
        except ValueError as error:  # the prompt and new tokens do not fit the context
            raise ConfigError(f"--num-beams {args.num_beams} --max-new-tokens {args.max_new_tokens}: {error}") from None
        sys.stdout.write(text + "\n")
        return
    max_new_tokens = args.max_new_tokens
    if args.no_stream and model.context_length is not None and max_new_tokens > model.context_length:
        # Nothing is printed before the end: an unbounded request would look like a hang.
        max_new_tokens = model.context_length
        sys.stderr.write(f"note: --max-new-tokens {args.max_new_tokens} capped at the model's context "
                         f"({max_new_tokens} tokens) with --no-stream; without it, text streams past the context\n")
    elif args.no_stream and max_new_tokens > model.block_size:
        sys.stderr.write(f"note: generating {max_new_tokens} tokens before printing anything (--no-stream)\n")
    stopper = StopStrings(args.stop)
    stop_ids = tuple(stop_ids) + generator.single_token_stops(stopper.stops)
    sys.stdout.write(text)
    pieces = []
    for token in generator.stream(
        [prompt_ids], max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed, stop_ids=stop_ids
    ):
        if args.chat and int(token[0]) in stop_ids:
            break  # the end of the assistant's turn: not part of the reply
        pieces.append(int(token[0]))
        if not args.no_stream:
            sys.stdout.write(stopper.feed(tokenizer.decode([pieces[-1]])))
            sys.stdout.flush()
            if stopper.done:
                break
    sys.stdout.write(stopper.cut(tokenizer.decode(pieces)) if args.no_stream else stopper.flush())
    sys.stdout.write("\n")


def _prompt(args, tokenizer):
    """`(text to print first, prompt ids, stop ids)`: the prompt itself, or with `--chat` the
    user message rendered by the chat template (nothing printed before the reply)."""
    if not args.chat:
        return args.prompt, tokenizer.encode(args.prompt), ()
    from kerasllm.errors import ConfigError

    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            f"--chat: the tokenizer of {args.model} has no chat template (no chat_template key in its "
            "tokenizer_config.json); drop --chat to continue the prompt as plain text, or use a chat checkpoint"
        )
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": args.prompt}], add_generation_prompt=True)
    return "", tokenizer.encode(rendered), tokenizer.end_of_turn_ids()


def _reply(tokenizer, new_ids, stop_ids):
    """The text of generated ids up to (without) the first end-of-turn id."""
    new_ids = [int(i) for i in new_ids]
    end = next((i for i, token in enumerate(new_ids) if token in stop_ids), len(new_ids))
    return tokenizer.decode(new_ids[:end])


if __name__ == "__main__":
    run_cli(main)
