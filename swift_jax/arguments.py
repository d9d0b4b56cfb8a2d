"""The argument groups every command composes (names and defaults as ms-swift 4.6's argument classes).

    group            fields                                         used by
    ModelArgs        model, dtype                                   every command
    AdapterArgs      adapters                                       every command (TunerArgs extends it)
    TemplateArgs     template, system, agent_template, thinking,    sft/pt/rlhf (inside DataArgs), infer, eval,
                     columns, dataset hub and registration          deploy, export
    GenerationArgs   max_new_tokens, temperature, top_k, top_p,     infer, eval, deploy (GRPO's rollout settings
                     repetition_penalty, seed, stop_words           extend SamplingArgs with temperature 0.9)

Training nests its groups (`args.model_args`, `args.tuner`, `args.data`, `args.training`, `args.mesh`), the
inference commands inherit them (flat dataclasses, as ms-swift's InferArguments); either way tyro reads flat
flags (`--template`, `--temperature`) through `swift_jax.cli.parse_config`, and a command changes a group's
default by re-declaring the field (eval's `max_new_tokens`, GRPO's `temperature`).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class ModelArgs:
    """Which checkpoint to load, and in what dtype."""

    model: str | None = None
    """HF model folder or hub id (with config.json). Default for inference and export: the base model recorded
    in the first --adapters checkpoint."""
    dtype: str | None = None
    """Parameter and compute dtype: float32 | bfloat16. Default: the checkpoint's (3.x name: torch_dtype)."""
    rope_scaling: str | None = None
    """Rotary scaling written into the model's config: linear | dynamic | yarn (the factor from --max_model_len)
    or a JSON object ('{"rope_type": "yarn", "factor": 4.0}'), as ms-swift."""
    new_special_tokens: list[str] = dataclasses.field(default_factory=list)
    """Tokens added to the tokenizer as special tokens (or .txt files of them); the embedding grows to a multiple
    of 128 rows when needed, new rows at the mean of the others. Checkpoints and exports save the tokenizer."""
    max_model_len: int | None = None
    """The longest sequence the model is set up for (its max_position_embeddings); with --rope_scaling, the
    length the scaling factor is derived from."""

    def adjust_config(self):
        """The HF-config adjustment of --rope_scaling / --max_model_len (`load_model(adjust_config=...)`), or None."""
        if self.rope_scaling is None and self.max_model_len is None:
            return None
        from swift_jax.hf.rope_scaling import scaled_config

        return lambda hf: scaled_config(hf, self.rope_scaling, self.max_model_len)


@dataclasses.dataclass
class AdapterArgs:
    """LoRA adapters to load on top of the model."""

    adapters: list[str] = dataclasses.field(default_factory=list)
    """LoRA checkpoint folders (PEFT format: our checkpoint-STEP folders, or PEFT's)."""


@dataclasses.dataclass
class TemplateArgs:
    """How rows are read (`columns`, the hub, registered datasets) and rendered into tokens: ms-swift's TemplateArguments that every command
    shares. Training-only template settings (loss_scale, max_length, packing, ...) live in DataArgs."""

    template: str | None = None
    """Chat template: None uses the tokenizer's own Jinja template (what inference engines render); an ms-swift
    template name (qwen, qwen2_5, qwen3, llama3, llama3_2, chatml, gemma, phi3, deepseek_v2_5, ...) encodes
    exactly as ms-swift's template of that name, default system prompt included; or a path to a .jinja file.
    Inference and export default to the template a checkpoint was trained with (its args.json)."""
    system: str | None = None
    """Default system prompt for rows that have none (replaces the template's own default)."""
    agent_template: str | None = None
    """How tools, tool calls and tool responses are written (ms-swift names: hermes, react_en, react_zh, qwen_en,
    qwen_zh, qwen_en_parallel, qwen_zh_parallel, glm4, chatglm4, llama3, deepseek_v3_1); None: the template's
    own (hermes for the qwen templates, llama3 for llama3). Needs --template."""
    enable_thinking: bool | None = None
    """Thinking templates: open responses with the thinking prefix (true) or the non-thinking one (false) at
    inference; None: the template's default (on for thinking templates). A row's chat_template_kwargs wins."""
    preserve_thinking: bool | None = None
    """Keep the reasoning of rounds before the last user message; None: ms-swift's rule (kept in training
    unless --loss_scale last_round)."""
    add_non_thinking_prefix: bool = True
    """Hybrid-thinking templates: prefix responses that do not start with <think> with the empty-thinking block."""
    response_prefix: str | None = None
    """Text that opens every generated response (overrides the thinking prefixes; inference only)."""
    columns: dict[str, str] = dataclasses.field(default_factory=dict)
    """Rename columns before format detection, e.g. {"prompt_text": "query"}."""
    use_hf: bool | None = None
    """Datasets: read hub ids and registered names from Hugging Face (true) or ModelScope (false); None: $USE_HF,
    else ModelScope when the modelscope package is installed, else Hugging Face (`hf::` / `ms::` in an entry win).
    Models always come from the Hugging Face hub."""
    hub_token: str | None = None
    """Token for private hub datasets (models: set HF_TOKEN)."""
    custom_dataset_info: list[str] = dataclasses.field(default_factory=list)
    """JSON files (or a JSON string) registering datasets in ms-swift's dataset_info.json format."""
    custom_register_path: list[str] = dataclasses.field(default_factory=list)
    """Python files that register datasets (`swift_jax.data.registry.register_dataset`), imported before reading."""

    def thinking(self):
        """The thinking controls as the template reads them."""
        from swift_jax.data.swift_template import ThinkingArgs

        return ThinkingArgs(self.enable_thinking, self.preserve_thinking, self.add_non_thinking_prefix, self.response_prefix)

    def trained_template_fields(self, *checkpoints: str | None) -> dict:
        """The template fields of an inference or export run: these arguments where given, else, field by field,
        what the first of `checkpoints` that has an args.json was trained with (ms-swift's load_args)."""
        from swift_jax.data.frontend import TEMPLATE_FIELDS, trained_template_args

        saved = trained_template_args(*checkpoints)
        return {k: getattr(self, k) if getattr(self, k) is not None else saved.get(k) for k in TEMPLATE_FIELDS}

    def trained_encoder(self, tokenizer, *checkpoints: str | None):
        """The prompt renderer of an inference or export run (see `trained_template_fields`)."""
        from swift_jax.data.frontend import chat_encoder
        from swift_jax.data.swift_template import ThinkingArgs

        f = self.trained_template_fields(*checkpoints)
        thinking = ThinkingArgs(f["enable_thinking"], f["preserve_thinking"], self.add_non_thinking_prefix, f["response_prefix"])
        return chat_encoder(tokenizer, f["template"], f["system"], agent_template=f["agent_template"], thinking=thinking)


@dataclasses.dataclass
class SavedArgs:
    """What an inference or export run takes from the checkpoint's args.json (ms-swift's load_args): composed
    with ModelArgs and AdapterArgs, whose --adapters and --model are the checkpoints read."""

    load_args: bool = True
    """Template arguments not given here (template, system, agent_template, thinking controls) are what the
    checkpoint was trained with; false: only the flags given (and the templates' own defaults)."""
    load_data_args: bool = False
    """infer: with no --val_dataset, answer the training run's --val_dataset rows (with its --columns)."""

    def trained_run(self) -> tuple[str | None, ...]:
        """The checkpoints whose args.json this run reads, in order: --adapters, then --model (none without
        --load_args)."""
        return (*self.adapters, self.model) if self.load_args else ()


@dataclasses.dataclass
class SamplingArgs:
    """How the next token is picked (ms-swift's GenerationArguments; GRPO's rollouts re-declare temperature)."""

    temperature: float = 0.0
    """0 = greedy (ms-swift's infer default: do_sample false)."""
    top_k: int = 0
    """Keep the k most likely tokens (0 or -1: off)."""
    top_p: float = 1.0
    """Nucleus sampling: keep the most likely tokens whose probability sums to top_p (1: off)."""
    repetition_penalty: float = 1.0
    """> 1 discourages tokens already in the prompt or the response (1: off)."""


@dataclasses.dataclass
class GenerationArgs(SamplingArgs):
    """Generation settings of infer, eval and deploy."""

    max_new_tokens: int = 512
    """Tokens generated per response at most."""
    seed: int = 42
    """Sampling seed (temperature > 0)."""
    stop_words: list[str] = dataclasses.field(default_factory=list)
    """Extra stop strings; generation also stops at the tokenizer's eos and the template's stop words."""
    num_beams: int = 1
    """Beam search width; only 1 (greedy or sampled decoding): a larger value is an error, not a silent greedy run."""

    def generation_config(self, generator=None, encoder=None):
        """The GenerationConfig of these settings; with the generator and the chat encoder, generation also
        stops at the template's stop tokens and words (ms-swift's template.stop_words)."""
        from swift_jax.data.frontend import template_stops
        from swift_jax.generation import GenerationConfig

        if self.num_beams != 1:
            raise ValueError(f"--num_beams {self.num_beams}: beam search is not implemented in swift_jax; use --num_beams 1 "
                             "(greedy with --temperature 0, or sampling)")

        eos, stop = None, tuple(self.stop_words)
        if generator is not None and encoder is not None:
            ids, words = template_stops(encoder)
            eos = tuple(sorted(set(generator.default_eos) | set(ids)))
            stop += tuple(w for w in words if w not in stop)
        return GenerationConfig(
            max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_k=max(self.top_k, 0),
            top_p=self.top_p, repetition_penalty=self.repetition_penalty, seed=self.seed, stop=stop, eos_token_ids=eos,
        )
