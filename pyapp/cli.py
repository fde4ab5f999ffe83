"""`pyapp` command line: pull/import models, generate, embed, serve, bench."""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

from .formats import SERVED_TAGS
from .store import PyappError


def _model_dir(name_or_path):
    from .store import model_path

    if os.sep in name_or_path and os.path.isdir(name_or_path):
        return name_or_path
    return model_path(name_or_path)


def load_tokenizer(model_dir):
    from .tokenizer import Tokenizer

    return Tokenizer.from_pretrained(str(model_dir))


def make_backend(kind, model_dir, dtype, start=0, stop=None, embed=None, head=None):
    if kind == "numpy":
        from .numpy_backend import NumpyBackend
        return NumpyBackend.load(model_dir, dtype, start, stop, embed=embed, head=head)
    if kind == "wgpu":
        from .gpu import GpuBackend
        return GpuBackend.load(model_dir, dtype, start, stop, embed=embed, head=head)
    raise PyappError(f"unknown backend {kind!r} (numpy, wgpu)")


class Runner:
    """A model on one backend, or split: layers [0, split) on numpy, the rest on `backend`."""

    def __init__(self, model_dir, backend="numpy", split=None, dtype="f32"):
        from .weightfile import load_model_dir

        self.model = m = load_model_dir(model_dir, dtype)
        n = m.n_layers
        if split is None or backend == "numpy":
            split = 0 if backend != "numpy" else n
        if not 0 <= split <= n:
            raise PyappError(f"--split must be in 0..{n}")
        self.split = split
        # the head part runs on numpy; the tail (and the model head) on `backend`
        self.head_part = make_backend("numpy", model_dir, dtype, 0, split, embed=True, head=False) \
            if split > 0 and backend != "numpy" else None
        if backend == "numpy":
            self.tail = make_backend("numpy", model_dir, dtype)
        else:
            self.tail = make_backend(backend, model_dir, dtype, split, n, embed=(split == 0),
                                     head=True)

    def new_caches(self, capacity):
        n = self.model.n_layers
        head_cache = self.head_part.new_cache(capacity, 0, self.split) if self.head_part else None
        start = self.split if self.head_part else 0
        return head_cache, self.tail.new_cache(capacity, start, n)

    def _tail_input(self, ids, head_cache):
        if self.head_part is None:
            return dict(ids=ids, start=0)
        x = self.head_part.forward(ids=ids, cache=head_cache, start=0, stop=self.split, head=False)
        return dict(x=x, start=self.split)

    def step_fn(self, params, capacity):
        from .sampling import sample_numpy

        head_cache, tail_cache = self.new_caches(capacity)

        def step(ids, n):
            inp = self._tail_input(ids, head_cache)
            if hasattr(self.tail, "step"):
                return self.tail.step(cache=tail_cache, params=params, n=n, **inp)
            logits = self.tail.forward(cache=tail_cache, **inp)
            return sample_numpy(logits[-1], params, n)
        return step

    def pipelined(self):
        """Every layer and the sampler on the GPU (split 0): decode may run steps ahead."""
        return self.head_part is None and hasattr(self.tail, "pipeline")

    def generate(self, params, prompt_ids, max_new, eos, on_token=None, should_stop=None, pipeline=True):
        """decode.generate, pipelined (GpuBackend.decode) when the whole model is on the GPU
        and `pipeline`; the step loop otherwise. Same ids either way."""
        if pipeline and self.pipelined():
            _head, cache = self.new_caches(len(prompt_ids) + max_new)
            return self.tail.decode(prompt_ids, cache, params, max_new, eos, on_token=on_token,
                                    should_stop=should_stop)
        from .decode import generate
        return generate(self.step_fn(params, len(prompt_ids) + max_new), prompt_ids, max_new, eos,
                        on_token=on_token, should_stop=should_stop)

    def embed(self, ids):
        head_cache, tail_cache = (None, None) if not self.model.causal else self.new_caches(len(ids))
        inp = self._tail_input(ids, head_cache)
        return self.tail.forward(cache=tail_cache, **inp)[0]


def cmd_generate(a):
    from .decode import check_context
    from .sampling import SamplingParams

    d = _model_dir(a.model)
    tok = load_tokenizer(d)
    if a.chat:
        text = tok.apply_chat_template([{"role": "user", "content": a.prompt}],
                                       add_generation_prompt=True)
        prompt_ids = tok.encode(text, add_special_tokens=False).ids
    else:
        prompt_ids = tok.encode(a.prompt).ids
    runner = Runner(d, a.backend, a.split, a.dtype)
    m = runner.model
    if not m.causal:
        raise PyappError(f"{a.model} is an encoder ({m.arch}); use `pyapp embed`")
    context = min(m.max_context, a.max_context) if a.max_context else m.max_context
    max_new = check_context(len(prompt_ids), a.max_new_tokens, context)
    params = SamplingParams(greedy=a.greedy, temperature=a.temperature, top_k=a.top_k,
                            top_p=a.top_p, seed=a.seed)
    eos = _eos_ids(d, m)
    stream = None
    if not a.json:
        stream = tok.decode_stream(skip_special_tokens=True) if hasattr(tok, "decode_stream") else None

        def on_token(t):
            if stream is not None:
                sys.stdout.write(stream.step(t))
                sys.stdout.flush()
    res = runner.generate(params, prompt_ids, max_new, eos, on_token=None if a.json else on_token,
                          pipeline=not a.step_loop)
    text = tok.decode(res.ids, skip_special_tokens=True)
    if a.json:
        print(json.dumps({"prompt_ids": res.prompt_ids, "ids": res.ids, "text": text,
                          "finish_reason": res.finish_reason,
                          "tokens_per_second": round(res.tokens_per_second, 3),
                          "time_to_first_token": round(res.time_to_first_token, 4)}))
    else:
        if stream is None:
            sys.stdout.write(text)
        sys.stdout.write("\n")
        print(f"[{len(res.ids)} tokens, {res.tokens_per_second:.2f} tok/s, "
              f"first token {res.time_to_first_token * 1000:.0f} ms, {res.finish_reason}]",
              file=sys.stderr)


def _eos_ids(model_dir, model):
    from pathlib import Path

    ids = set(model.eos_ids)
    gc = Path(model_dir) / "generation_config.json"
    if gc.exists():
        v = json.loads(gc.read_text()).get("eos_token_id")
        ids.update(v if isinstance(v, list) else ([] if v is None else [v]))
    return sorted(ids)


def cmd_embed(a):
    d = _model_dir(a.model)
    tok = load_tokenizer(d)
    # one sentence at a time, whole: tokenizer.json's padding would be pooled, its truncation
    # (MiniLM's cuts at 128) would drop text; too long is refused below
    tok.no_padding()
    tok.no_truncation()
    runner = Runner(d, a.backend, a.split, a.dtype)
    if runner.model.causal:
        raise PyappError(f"{a.model} is a decoder ({runner.model.arch}); use `pyapp generate`")
    out = []
    for t in a.texts:
        ids = tok.encode(t).ids
        if len(ids) > runner.model.max_context:
            raise PyappError(f"text of {len(ids)} tokens is longer than the context of "
                             f"{runner.model.max_context}")
        out.append([float(v) for v in runner.embed(ids)])
    if a.json:
        print(json.dumps({"model": a.model, "embeddings": out}))
    else:
        for t, e in zip(a.texts, out):
            print(f"{t[:40]!r}: [{', '.join(f'{v:.4f}' for v in e[:6])}, ...] dim={len(e)}")


def cmd_models(a):
    from .store import list_models, models_dir

    ms = list_models()
    if a.json:
        print(json.dumps(ms))
        return
    if not ms:
        print(f"no models in {models_dir()} (try `pyapp pull smollm2-135m`)")
    for m in ms:
        mark = "  (synthetic: random weights)" if m.get("synthetic") else ""
        print(f"{m['name']:24} {m.get('architecture', '?'):6} {', '.join(m.get('dtypes', []))}{mark}")


def cmd_pull(a):
    from .convert import pull
    pull(a.name, dtype=a.dtype, force=a.force)


def cmd_import(a):
    from .convert import import_path
    import_path(a.path, name=a.name, dtype=a.dtype, quantize=a.quantize)


QUANTIZE_TAGS = ("q4_1", "q8_0")


def add_format_flag(s):
    """`--format` (alias `--dtype`): which weight file of the model to run."""
    from .formats import FILE_TAGS
    s.add_argument("--format", "--dtype", dest="dtype", default="f32", choices=list(FILE_TAGS),
                   help="weight file to run: f32, f16, or quantized blocks dequantized in the kernels")


def cmd_synth(a):
    from .synth import synth
    synth(a.name, a.config, dtype=a.dtype, seed=a.seed, tokenizer_from=a.tokenizer_from)


def cmd_build_site(a):
    from .site import DEFAULT_MODELS, build_site
    from .site import parse_size
    try:
        size = parse_size(a.max_file_size)
    except ValueError as e:
        raise PyappError(f"--max-file-size: {e}") from None
    build_site(a.out_dir, a.model or DEFAULT_MODELS, a.format, size)


def build_parser():
    p = argparse.ArgumentParser(prog="pyapp", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("pull", help="fetch and convert a known model into the store")
    s.add_argument("name")
    s.add_argument("--dtype", default="f32", choices=["f32", "f16", "all"])
    s.add_argument("--force", action="store_true")
    s.set_defaults(fn=cmd_pull)

    s = sub.add_parser("import", help="import a GGUF file or HF folder into the store")
    s.add_argument("path")
    s.add_argument("--name")
    s.add_argument("--dtype", default="f32", choices=["f32", "f16", "all"])
    s.add_argument("--quantize", choices=list(QUANTIZE_TAGS), action="append",
                   help="also write model.<tag>.safetensors, quantized as llama.cpp does")
    s.set_defaults(fn=cmd_import)

    s = sub.add_parser("synth", help="write a model with random weights for an HF config (tests, benchmarks)")
    s.add_argument("name")
    s.add_argument("--config", required=True, help="an HF config.json of a supported architecture")
    s.add_argument("--dtype", default="f32", choices=["f32", "f16", "q4_1", "q8_0"])
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--tokenizer-from", default=None, help="a stored model (or folder) whose tokenizer files to copy")
    s.set_defaults(fn=cmd_synth)

    s = sub.add_parser("models", help="list the store")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_models)

    def common(s):
        s.add_argument("--backend", default="numpy", choices=["numpy", "wgpu"])
        s.add_argument("--split", type=int, default=None,
                       help="layers [0, K) on numpy, the rest on --backend")
        add_format_flag(s)
        s.add_argument("--json", action="store_true")

    s = sub.add_parser("generate", help="generate text")
    s.add_argument("model")
    s.add_argument("prompt")
    s.add_argument("--chat", action="store_true", help="apply the model's chat template")
    s.add_argument("--max-new-tokens", type=int, default=64)
    s.add_argument("--max-context", type=int, default=None)
    g = s.add_mutually_exclusive_group()
    g.add_argument("--greedy", action="store_true", default=True)
    g.add_argument("--temperature", type=float, default=None)
    s.add_argument("--top-p", type=float, default=1.0)
    s.add_argument("--top-k", type=int, default=0)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--step-loop", action="store_true",
                   help="read each token before submitting the next (no pipelined decode on the GPU)")
    common(s)
    s.set_defaults(fn=cmd_generate)

    s = sub.add_parser("embed", help="sentence embeddings (normalized)")
    s.add_argument("model")
    s.add_argument("texts", nargs="+")
    common(s)
    s.set_defaults(fn=cmd_embed)

    s = sub.add_parser("build-site", help="write the site as plain files for any static host")
    s.add_argument("out_dir")
    s.add_argument("--model", action="append", default=None,
                   help="a model to include (repeatable); default: smollm2-135m and minilm-l6")
    s.add_argument("--format", default=None, choices=list(SERVED_TAGS),
                   help="weight format; default (and for a model without the one named): the "
                        "smallest format the model has, which the page runs by default")
    s.add_argument("--max-file-size", default="16MiB",
                   help="no file of the site is larger (default and most: 16MiB; e.g. 4MiB, "
                        "4000000); under Cloudflare Pages' 25 MiB and GitHub Pages' 100 MB caps")
    s.set_defaults(fn=cmd_build_site)

    sub.add_parser("serve", help="run the server (see `pyapp serve --help`)", add_help=False)
    sub.add_parser("bench", help="benchmarks (see `pyapp bench --help`)", add_help=False)
    return p


def _plugin_command(name):
    """A subcommand an application package provides through the ``pyapp.commands`` entry point
    group (the server registers ``serve``), so the library never imports the app."""
    from importlib.metadata import entry_points
    for ep in entry_points(group="pyapp.commands", name=name):
        return ep.load()
    # an editable install made before the entry point existed: the checkout's own server/
    import importlib.util
    if importlib.util.find_spec("server.main") is not None:
        return importlib.import_module("server.main").main
    raise PyappError(f"`pyapp {name}` needs the server: pip install 'pyapp[server]'")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv and argv[0] == "serve":
            return _plugin_command("serve")(argv[1:])
        if argv and argv[0] == "bench":
            from .bench import main as bench_main
            return bench_main(argv[1:])
        a = build_parser().parse_args(argv)
        if getattr(a, "temperature", None) is not None:
            a.greedy = False
        elif hasattr(a, "temperature"):
            a.temperature = 1.0
        a.fn(a)
        return 0
    except (PyappError, ValueError, FileNotFoundError) as e:
        print(f"pyapp: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
