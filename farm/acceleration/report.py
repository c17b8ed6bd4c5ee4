"""What acceleration did to a model, for `farm accelerate --report` and for Python callers."""

from __future__ import annotations

from dataclasses import dataclass, field

from .rewrite import op_names


@dataclass
class Report:
    model: str = ""
    kernels: bool = False
    kernel_backend: str = ""
    compile: bool = False
    attention: str | None = None
    attention_skipped: dict = field(default_factory=dict)  # backend -> why it was not used
    cache: dict | None = None
    graphs: dict = field(default_factory=dict)  # digest of a graph's code -> its pattern counts

    @property
    def replaced(self) -> dict:
        total = {p: 0 for p in op_names()}
        for counts in self.graphs.values():
            for p, n in counts.items():
                total[p] += n
        return total

    def to_json(self) -> dict:
        return {"model": self.model, "kernels": self.kernels, "kernel_backend": self.kernel_backend,
                "compile": self.compile, "attention": self.attention, "attention_skipped": self.attention_skipped,
                "cache": self.cache, "graphs": len(self.graphs), "replaced": self.replaced}

    def text(self) -> str:
        lines = [f"model: {self.model}"]
        lines.append(f"kernels: {'on (' + self.kernel_backend + ')' if self.kernels else 'off'}")
        lines.append(f"compile: {'inductor' if self.compile else 'off'}")
        if self.attention:
            skipped = "; ".join(f"{k}: {v}" for k, v in self.attention_skipped.items())
            lines.append(f"attention: {self.attention}" + (f" (not available: {skipped})" if skipped else ""))
        else:
            lines.append("attention: unchanged")
        if self.cache:
            c = self.cache
            if c.get("supported") and c["kind"] == "taylorseer":
                lines.append(f"cache: taylorseer, full attention on the first {c['warmup']} steps then every "
                             f"{c['interval']}: {c['skipped']} of {c['decisions']} denoiser calls predicted it")
            elif c.get("supported"):
                lines.append(f"cache: {c['kind']} threshold {c['threshold']}: {c['skipped']} of {c['decisions']} "
                             f"denoiser calls skipped the blocks after the first")
            else:
                lines.append(f"cache: not used ({c['reason']})")
        else:
            lines.append("cache: off")
        if self.kernels:
            n = len(self.graphs)
            lines.append(f"replaced (in {n} graph{'s' if n != 1 else ''}" + ("; a graph Dynamo reuses for "
                         "identical blocks counts once" if n > 1 else "") + "):")
            width = max(map(len, self.replaced), default=0)
            lines += [f"  {p:<{width}}  {n}" for p, n in self.replaced.items()]
        return "\n".join(lines)
