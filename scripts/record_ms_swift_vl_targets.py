"""Record which modules ms-swift's LoRA `all-linear` adapts in each vision-language model, for every
`--freeze_llm` / `--freeze_vit` / `--freeze_aligner` setting, as the golden file of
tests/test_multimodal_controls.py.

Run with ms-swift's python (never from tests; CI does not install ms-swift):

    /opt/msswift/bin/python scripts/record_ms_swift_vl_targets.py   # writes tests/golden/vl_lora_targets.json

For the tiny random models of tests/tiny_vlm.py, ms-swift's `get_multimodal_target_regex` (with the
model's registered `model_arch`) gives the regex PEFT receives as `target_modules`; recorded are the regex
and the modules PEFT adapts with it (`re.fullmatch` over `named_modules()`, as PEFT matches a string),
with their module class. A setting ms-swift refuses is recorded as {"error": message}.
"""

from __future__ import annotations

import datetime
import itertools
import json
import os
import re
import sys
from types import SimpleNamespace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "golden", "vl_lora_targets.json")
sys.path.insert(0, os.path.join(ROOT, "tests"))

import swift  # noqa: E402
import transformers  # noqa: E402
from swift.model.model_arch import MODEL_ARCH_MAPPING  # noqa: E402
from swift.utils import get_multimodal_target_regex  # noqa: E402
from tiny_vlm import build_hf_gemma3, build_hf_internvl, build_hf_vlm  # noqa: E402

# model_type -> (builder, ms-swift's model_arch for it: swift/model/models/{qwen,internlm,gemma}.py)
MODELS = {
    "qwen2_vl": (lambda: build_hf_vlm("qwen2_vl"), "qwen2_vl"),
    "qwen2_5_vl": (lambda: build_hf_vlm("qwen2_5_vl"), "qwen2_vl"),
    "internvl": (lambda: build_hf_internvl(), "llava_hf"),
    "gemma3": (lambda: build_hf_gemma3(), "llava_hf"),
}


def main() -> None:
    golden = {
        "recorded": datetime.date.today().isoformat(),
        "ms_swift": swift.__version__,
        "transformers": transformers.__version__,
        "cases": {},
    }
    for kind, (build, arch) in MODELS.items():
        model = build()
        model.model_meta = SimpleNamespace(model_arch=MODEL_ARCH_MAPPING[arch])
        model.model_info = SimpleNamespace(is_moe_model=False)
        for freeze_llm, freeze_vit, freeze_aligner in itertools.product([False, True], repeat=3):
            key = f"{kind}:llm={int(freeze_llm)},vit={int(freeze_vit)},aligner={int(freeze_aligner)}"
            flags = dict(freeze_llm=freeze_llm, freeze_vit=freeze_vit, freeze_aligner=freeze_aligner)
            try:
                regex = get_multimodal_target_regex(model, **flags)
            except AssertionError as err:
                golden["cases"][key] = {"error": str(err)}
                continue
            modules = {n: type(m).__name__ for n, m in model.named_modules() if n and re.fullmatch(regex, n)}
            golden["cases"][key] = {"regex": regex, "modules": modules}
    with open(OUT, "w") as f:
        json.dump(golden, f, indent=1, sort_keys=True)
    print(f"wrote {OUT}: {len(golden['cases'])} cases")


if __name__ == "__main__":
    main()
