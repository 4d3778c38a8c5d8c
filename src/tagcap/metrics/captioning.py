"""Caption metrics through pycocoevalcap: BLEU-1..4, METEOR, ROUGE-L, CIDEr-D, on 0-100 scales.

All references of an image are used; hypotheses and references go through the PTB tokenizer
(Java), as in the COCO evaluation server. SPICE needs a download and is left out.
`bleu4_quick` skips Java for the per-epoch model selection on the validation split.
"""

from __future__ import annotations

import shutil
import subprocess

from tagcap.data.captions import tokenize
from tagcap.errors import TagcapError, require_extra

class JavaMissingError(TagcapError):
    pass


# the scores `caption_metrics` returns, in the order tables show them
CAPTION_COLUMNS = ("BLEU1", "BLEU2", "BLEU3", "BLEU4", "METEOR", "ROUGE_L", "CIDEr")

def require_java() -> None:
    """METEOR and the PTB tokenizer run on Java: say what to install instead of a subprocess trace."""
    java = shutil.which("java")
    ok = False
    if java:
        try:
            ok = subprocess.run([java, "-version"], capture_output=True, timeout=30).returncode == 0
        except (OSError, subprocess.SubprocessError):
            ok = False
    if not ok:
        raise JavaMissingError("caption metrics need Java 8 or newer on PATH (METEOR and the PTB tokenizer of "
                               "pycocoevalcap run on it): install a JRE, e.g. `apt install default-jre-headless`")


def _check(predictions: dict, references: dict) -> None:
    missing = sorted(set(predictions) ^ set(references))
    if missing:
        raise TagcapError(f"predictions and references cover different images, e.g. {missing[:3]}")
    empty = [k for k, refs in references.items() if not refs]
    if empty:
        raise TagcapError(f"image {empty[0]!r} has no reference caption")


def caption_metrics(predictions: dict[str, str], references: dict[str, list[str]],
                    meteor: bool = True) -> dict[str, float]:
    """Corpus-level scores (x100) of one predicted caption per image against all its references."""
    require_extra("pycocoevalcap", "caption", "caption metrics")
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    _check(predictions, references)
    require_java()
    ids = sorted(predictions)
    tok = PTBTokenizer()
    gts = tok.tokenize({i: [{"caption": c} for c in references[i]] for i in ids})
    res = tok.tokenize({i: [{"caption": predictions[i] or " "}] for i in ids})
    res = {i: [c[0] if c[0].strip() else "<empty>"] for i, c in res.items()}  # METEOR chokes on empty lines
    out: dict[str, float] = {}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    out.update({f"BLEU{n + 1}": float(100 * b) for n, b in enumerate(bleu)})
    if meteor:
        from pycocoevalcap.meteor.meteor import Meteor

        scorer = Meteor()
        try:
            out["METEOR"] = 100 * scorer.compute_score(gts, res)[0]
        finally:
            _close_meteor(scorer)
    out["ROUGE_L"] = float(100 * Rouge().compute_score(gts, res)[0])
    out["CIDEr"] = float(100 * Cider().compute_score(gts, res)[0])
    return out


def _close_meteor(scorer) -> None:
    # pycocoevalcap's Meteor only stops its Java process in __del__; end it now so none is left behind
    try:
        scorer.meteor_p.stdin.close()
        scorer.meteor_p.kill()
        scorer.meteor_p.wait(timeout=10)
    except (OSError, subprocess.SubprocessError, AttributeError):
        pass


def bleu4_quick(predictions: dict[str, str], references: dict[str, list[str]]) -> float:
    """Corpus BLEU-4 (x100) on tagcap's own tokenization, without Java: for ranking epochs."""
    require_extra("pycocoevalcap", "caption", "validation BLEU-4 while training a captioner")
    from pycocoevalcap.bleu.bleu import Bleu

    _check(predictions, references)
    ids = sorted(predictions)
    gts = {i: [" ".join(tokenize(c)) for c in references[i]] for i in ids}
    res = {i: [" ".join(tokenize(predictions[i])) or "<empty>"] for i in ids}
    return 100 * Bleu(4).compute_score(gts, res, verbose=0)[0][3]
