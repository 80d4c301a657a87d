"""Typed settings from a home's .env and the environment, and the paths of a kb home.

Precedence: environment variables > <home>/.env > the defaults below. Every setting is
``KBLOOP_<FIELD>`` in upper case; ``.env.example`` is rendered from this file.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from dotenv import dotenv_values
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kbloop.errors import ConfigError, HomeNotFound
from kbloop.fsutil import fsync_folder

ENV_PREFIX = "KBLOOP_"
HOME_ENV = "KBLOOP_HOME"
MODEL_SPEC = re.compile(r"^[a-z][a-z0-9_-]*:.+$")


# The settings whose help says what an empty value does; for every other, empty means the default.
EMPTY_IS_A_VALUE = frozenset({"ray_address", "qdrant_url", "qdrant_api_key", "qdrant_path", "learn_at", "api_key"})


class Settings(BaseModel):
    """Everything a user can set. Each field's description is its documentation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    docs_dir: str = Field(
        "docs",
        description="Folder of documents to index; relative paths are relative to the kb home.",
    )
    embedder: str = Field(
        "local:all-minilm-l6-v2",
        description=(
            "Embedding model as provider:name. local:all-minilm-l6-v2 (packaged, 384 dims), "
            "hf:<folder> (a local sentence-transformers model folder) or ollama:<model> "
            "(e.g. ollama:nomic-embed-text). Changing it needs `kbloop ingest --rebuild`."
        ),
    )
    generator: str = Field(
        "local:qwen2.5-0.5b",
        description=(
            "Model that answers questions: local:qwen2.5-0.5b (packaged, default), local:smollm2-135m "
            "(packaged, small and fast), hf:<folder> (a local Hugging Face model) or ollama:<model>."
        ),
    )
    judge: str = Field(
        "local:qwen2.5-1.5b",
        description="Model that grades answers during evaluation (same choices as KBLOOP_GENERATOR).",
    )
    teacher: str = Field(
        "local:qwen2.5-1.5b",
        description=("Model that writes question/answer pairs for training data (same choices): the strongest "
                     "one available, since the answering model learns its answers. The default is the judge's "
                     "model, so one model is loaded for both."),
    )
    engine: Literal["llamacpp", "transformers"] = Field(
        "llamacpp",
        description=(
            "Engine for local: models: llamacpp runs the packaged GGUF files as they are (fast; needs "
            "llama-cpp-python, which the install builds), transformers runs an fp32 copy (slow; the fallback "
            "when llama-cpp-python does not load). Training always uses transformers."
        ),
    )
    llamacpp_weights: Literal["packaged", "fast"] = Field(
        "packaged",
        description=(
            "Weights llama.cpp runs: packaged runs each file as shipped; fast re-quantises a packaged model "
            "once into the model cache where that reads prompts faster on CPU (qwen2.5-0.5b as Q4_0: time "
            "to first token 0.64-0.73x, but 3 fewer right answers of 20 on kbdev; docs/models.md)."
        ),
    )
    model_cache: str = Field(
        "~/.cache/kbloop",
        description="Where packaged models are assembled and converted once (shared by all homes).",
    )
    retrieve_k: int = Field(4, ge=1, le=50, description="Chunks put in front of the model for each question.")
    min_score: float = Field(
        0.42, ge=-1.0, le=1.0,
        description=(
            "Refuse without asking the model when the best chunk's cosine similarity is below this "
            "(calibrated for local:all-minilm-l6-v2 on both development corpora; see docs/answers.md)."
        ),
    )
    verify_answers: bool = Field(
        False,
        description=(
            "Check each answer with the judge model (KBLOOP_JUDGE) before it is shown: the answer stands only "
            "when a source states it for exactly what was asked; costs one judge call per answer. Off by default: "
            "with the packaged judge it refused more right answers than wrong ones (docs/answers.md)."
        ),
    )
    value_confidence: float = Field(
        0.6, ge=0.0, le=1.0,
        description=(
            "When the model gave a number of its answer (one the question does not hold) with less than this "
            "probability, the judge model (KBLOOP_JUDGE) checks that a source states it for exactly what was "
            "asked (KBLOOP_VALUE_SUPPORT). A value copied from a source comes with a probability near 1; one "
            "picked for a setting the sources do not describe, often near 0.5. 0 turns the check off. Local "
            "models only: an Ollama generator reports no probabilities (docs/answers.md)."
        ),
    )
    value_support: float = Field(
        0.2, ge=0.0, le=1.0,
        description=(
            "An answer whose value the model was unsure of (KBLOOP_VALUE_CONFIDENCE) stands only when the judge "
            "model, reading the sources and the question, would write that value itself after the same words "
            "with at least this probability (an Ollama judge, which gives no probabilities, answers yes or no)."
        ),
    )
    answer_confidence: float = Field(
        0.7, ge=0.0, le=1.0,
        description=(
            "When the generator wrote a word of its answer (one the question does not hold) with less than this "
            "probability, and the answer passed the checks (a value the value check refused stays refused), the "
            "judge model (KBLOOP_JUDGE) answers from the same sources instead, and its answer goes through every "
            "check; where it says the sources hold no answer, it checks the generator's answer, which stands when "
            "stated for what was asked. Costs the judge's reply for those answers "
            "only (about a third on the development corpora). 0 turns this off, as do "
            "KBLOOP_READ_AGAIN=false and KBLOOP_READ_AGAIN_WITH=generator. Local "
            "generators only: an Ollama generator reports no probabilities (docs/answers.md)."
        ),
    )
    read_again: bool = Field(
        True,
        description=(
            "When the model says the sources hold no answer although they passed the relevance checks, the "
            "sources are read once more without the option to refuse (KBLOOP_READ_AGAIN_WITH); that answer is "
            "shown only when the judge model (KBLOOP_JUDGE) finds it stated in a source for exactly what was "
            "asked and no other check refuses it. Costs a second reply and a judge call, only for such refusals "
            "(docs/answers.md)."
        ),
    )
    read_again_with: Literal["judge", "generator"] = Field(
        "judge",
        description=(
            "Which model reads the sources again when the generator gave no answer, a refusal (KBLOOP_READ_AGAIN) "
            "or the question restated: the judge model (KBLOOP_JUDGE), larger than the default generator, which "
            "found more of the answers the generator had missed on both development corpora; or the generator "
            "(docs/answers.md). With KBLOOP_READ_AGAIN=false the generator asks itself again."
        ),
    )
    rewrite_follow_ups: bool = Field(
        True,
        description=(
            "In a chat, have the judge model (KBLOOP_JUDGE) rewrite a follow-up (\"which hook does it run?\") "
            "from the two questions, never the earlier answer, into one that stands alone, which is then searched "
            "and answered; a rewrite that adds more than the earlier question's words is not used. Costs one "
            "short judge call per follow-up; one more right follow-up of 6 on each development corpus "
            "(docs/answers.md)."
        ),
    )
    corrections_as_sources: bool = Field(
        True,
        description=(
            "Answer a question that asks what a user corrected (a thumbs-down with the right answer) with that "
            "correction among its sources, first in rank, from the moment it is sent: no training needed. "
            "Evaluations leave corrections out, so the gate still measures what an adapter learned."
        ),
    )
    correction_match: float = Field(
        0.85, ge=0.0, le=1.0,
        description=(
            "How close a question must be to a corrected one, or to a phrasing of it that a dataset build kept "
            "(cosine similarity of their embeddings), to be given its correction (calibrated for "
            "local:all-minilm-l6-v2 on both development corpora; docs/answers.md)."
        ),
    )
    max_new_tokens: int = Field(200, ge=1, le=8192, description="Longest answer, in tokens.")
    chunk_size: int = Field(
        800, ge=100, le=20000, description="Characters per chunk (the splitter's target size)."
    )
    chunk_overlap: int = Field(
        120, ge=0, le=5000, description="Characters shared by neighbouring chunks; below chunk_size."
    )
    max_file_mb: float = Field(
        50.0, gt=0, description="Files larger than this many MiB are skipped with a reason."
    )
    follow_external_links: bool = Field(
        False,
        description=(
            "Follow symbolic links in the docs folder (files and folders) that point outside it. Off, "
            "such links are skipped with a logged reason, so a link cannot make files elsewhere "
            "searchable; links that stay inside the docs folder are always followed."
        ),
    )
    embed_batch_size: int = Field(
        32, ge=1, le=4096, description="Texts per embedding call."
    )
    ingest_engine: Literal["local", "ray"] = Field(
        "local",
        description=(
            "`kbloop ingest`: where files are parsed, split and embedded: local (this process) or ray (a Ray "
            "cluster; docs/scaling.md). Either way this process alone writes the manifest and the vector store, "
            "and the index comes out the same."
        ),
    )
    ray_address: str = Field(
        "",
        description=(
            "With KBLOOP_INGEST_ENGINE=ray: the cluster to run on, as host:port of its head node (the port of "
            "`ray start --head`) or auto (the cluster started on this machine); empty starts a private Ray for "
            "each ingest with KBLOOP_RAY_WORKERS + 1 CPUs."
        ),
    )
    ray_workers: int = Field(
        2, ge=1, le=256,
        description=(
            "With KBLOOP_INGEST_ENGINE=ray: embedding actors, each taking one CPU and loading the embedding "
            "model once (fewer run while the cluster lacks free CPUs)."
        ),
    )
    search_k: int = Field(5, ge=1, le=200, description="Chunks returned by `kbloop search` by default.")
    keyword_weight: float = Field(
        1.0, ge=0.0, le=100.0,
        description=(
            "How much the keyword ranking (BM25 over the chunks' words) counts against the embedding ranking when "
            "the two are fused: 1 counts them alike, 0 searches by embedding alone. At 3 the sources held more of "
            "the benchmark questions' evidence on both development corpora, but the default model answered no "
            "better on one and worse on the other, so 1 stays (docs/answers.md)."
        ),
    )
    vector_store: Literal["faiss", "qdrant"] = Field(
        "faiss",
        description=(
            "Engine that holds the vectors: faiss (files in the home's vector_store/ folder) or qdrant "
            "(embedded in KBLOOP_QDRANT_PATH, or the server at KBLOOP_QDRANT_URL; docs/scaling.md). Switch "
            "with `kbloop migrate-store --to qdrant|faiss`, which copies the vectors and then sets this."
        ),
    )
    qdrant_url: str = Field(
        "",
        description=(
            "With KBLOOP_VECTOR_STORE=qdrant: base URL of a Qdrant server or cluster, such as "
            "http://127.0.0.1:6333; empty runs Qdrant embedded in KBLOOP_QDRANT_PATH instead."
        ),
    )
    qdrant_api_key: str = Field(
        "", description="The API key sent to the Qdrant server at KBLOOP_QDRANT_URL; empty sends none."
    )
    qdrant_path: str = Field(
        "",
        description=(
            "With KBLOOP_VECTOR_STORE=qdrant and no KBLOOP_QDRANT_URL: the folder of embedded Qdrant, which one "
            "process at a time can open; empty means vector_store/qdrant in the home, relative paths are "
            "relative to the home."
        ),
    )
    qdrant_collection: str = Field(
        "kbloop",
        description=(
            "Name of the home's Qdrant collections (name-1, name-2, ...) and of the alias of the one in use; "
            "homes that share a Qdrant server need names of their own."
        ),
    )
    qdrant_shards: int = Field(
        0, ge=0, le=1024,
        description="Shards of each new Qdrant collection on a cluster; 0 takes the server's default.",
    )
    qdrant_replication_factor: int = Field(
        0, ge=0, le=100,
        description="Copies of each shard of a new Qdrant collection on a cluster; 0 takes the server's default (1).",
    )
    qdrant_write_consistency: int = Field(
        0, ge=0, le=100,
        description=(
            "Replicas that must confirm each write to a new Qdrant collection before it counts; 0 takes the "
            "server's default (1). At most KBLOOP_QDRANT_REPLICATION_FACTOR."
        ),
    )
    ollama_url: str = Field(
        "http://127.0.0.1:11434",
        description="Base URL of an Ollama server, used only by ollama:<model> backends.",
    )
    ollama_timeout: float = Field(
        120.0, gt=0,
        description="Seconds to wait for the next part of an Ollama response before giving up (each wait; "
                    "KBLOOP_OLLAMA_DEADLINE bounds the whole request).",
    )
    ollama_connect_timeout: float = Field(
        2.0, gt=0, description="Seconds to wait for a connection to Ollama before reporting it down."
    )
    ollama_deadline: float = Field(
        600.0, gt=0,
        description=(
            "Most seconds one Ollama request (an answer, a judgement, a batch of embeddings) may take in "
            "all, however slowly the server sends it; KBLOOP_OLLAMA_TIMEOUT bounds each wait for more."
        ),
    )
    torch_threads: int = Field(
        0, ge=0, le=512,
        description="CPU threads for local models; 0 uses the physical cores (llama.cpp) or lets torch decide.",
    )
    dataset_teacher_pairs: int = Field(
        2, ge=0, le=10,
        description=(
            "`kbloop dataset build`: facts the teacher model asks about per new chunk, besides the extractive "
            "ones that need no model; 0 builds from extractive pairs only (fast, offline)."
        ),
    )
    dataset_teacher_phrasings: int = Field(
        2, ge=1, le=5,
        description=(
            "`kbloop dataset build`: ways the teacher asks each of its facts; each phrasing becomes a record "
            "with its own teacher-written, checked answer (one teacher answer and one judge check each)."
        ),
    )
    dataset_correction_phrasings: int = Field(
        4, ge=0, le=10,
        description=(
            "`kbloop dataset build`: other ways the teacher model asks each question a user corrected; each "
            "becomes a training record with the user's answer, kept when what retrieval finds for it holds the "
            "question's own best source. 0, or `--no-teacher`, trains the question as asked only."
        ),
    )
    dataset_distractors: int = Field(
        3, ge=0, le=20, description="`kbloop dataset build`: retrieved non-source chunks put beside each question."
    )
    dataset_oracle_p: float = Field(
        0.8, ge=0.0, le=1.0,
        description=(
            "`kbloop dataset build`: share of training records whose knowledge includes the source chunk; "
            "the rest teach the model to say the knowledge does not hold the answer."
        ),
    )
    dataset_eval_fraction: float = Field(
        0.1, ge=0.0, le=0.9,
        description="`kbloop dataset build`: share of source chunks held out for evaluation (never trained on).",
    )
    finetune_lora_r: int = Field(8, ge=1, le=256, description="`kbloop finetune`: LoRA rank of a new adapter.")
    finetune_lora_alpha: int = Field(16, ge=1, le=1024, description="`kbloop finetune`: LoRA alpha (scale) of a new adapter.")
    finetune_lora_dropout: float = Field(0.05, ge=0.0, lt=1.0, description="`kbloop finetune`: LoRA dropout.")
    finetune_target_modules: str = Field(
        "q_proj,k_proj,v_proj,o_proj",
        description="`kbloop finetune`: comma-separated module names a new adapter wraps (attention projections).",
    )
    finetune_lr: float = Field(2e-4, gt=0, lt=1, description="`kbloop finetune`: learning rate of a new adapter.")
    finetune_incremental_lr: float = Field(
        1e-4, gt=0, lt=1,
        description="`kbloop finetune`: learning rate when continuing an adapter (lower, to keep what it learned).",
    )
    finetune_epochs: int = Field(2, ge=1, le=100, description="`kbloop finetune`: passes over the selected records.")
    finetune_batch_size: int = Field(
        2, ge=1, le=256, description="`kbloop finetune`: records per forward pass (grouped by length)."
    )
    finetune_grad_accum: int = Field(
        4, ge=1, le=1024, description="`kbloop finetune`: forward passes per optimizer step."
    )
    finetune_max_seq_len: int = Field(
        1024, ge=64, le=32768, description="`kbloop finetune`: longest record in tokens; longer ones are skipped."
    )
    finetune_replay_ratio: float = Field(
        0.5, ge=0.0, le=10.0,
        description=(
            "`kbloop finetune`: when continuing an adapter, older active records replayed per new record, "
            "so it does not forget what it knew."
        ),
    )
    finetune_max_records: int = Field(
        0, ge=0,
        description=(
            "`kbloop finetune`: at most this many new records per run (the rest wait for the next run); "
            "0 takes them all. Bounds how long one run takes on CPU."
        ),
    )
    finetune_checkpoint_steps: int = Field(
        20, ge=1, le=100000,
        description="`kbloop finetune`: optimizer steps between checkpoints that `kbloop finetune --resume` continues from.",
    )
    finetune_gradient_checkpointing: bool = Field(
        False, description="`kbloop finetune`: trade compute for memory (about 30% slower, much less RAM)."
    )
    # torch.manual_seed and numpy take at most 2**32 - 1; a larger seed would fail mid-run.
    finetune_seed: int = Field(
        0, ge=0, le=2**32 - 1,
        description="`kbloop finetune`: seed for record order, replay sampling and LoRA init.",
    )
    finetune_patience: int = Field(
        3, ge=0, le=1000,
        description=(
            "`kbloop finetune`: stop once this many probe-loss measurements in a row bring no new best (the loss "
            "rose or stalled), and keep the adapter of the best one; 0 turns early stopping off (no records are "
            "held out)."
        ),
    )
    finetune_probe_fraction: float = Field(
        0.1, gt=0.0, le=0.2,
        description=(
            "`kbloop finetune`: share of a run's records held out of training as the probe that early stopping "
            "watches (4 to 16 records; none in a run of fewer than 20 records). Held-out records are trained "
            "on by the next run."
        ),
    )
    finetune_eval_steps: int = Field(
        10, ge=1, le=100000,
        description=(
            "`kbloop finetune`: optimizer steps between two measurements of the probe loss (and one at the end)."
        ),
    )
    finetune_correction_repeats: int = Field(
        16, ge=1, le=50,
        description=(
            "`kbloop finetune`: times each user's correction is trained per epoch, spread over the question as "
            "asked and its other phrasings (each at least once), its retrieved sources in another order each "
            "time. A correction is one fact where the documents' facts come with several records; a run always "
            "takes the corrections it has not learned, whatever KBLOOP_FINETUNE_MAX_RECORDS."
        ),
    )
    eval_max_items: int = Field(
        60, ge=1, le=100000, description="`kbloop evaluate`: most eval questions asked per run (user sets included)."
    )
    eval_old_share: float = Field(
        0.3, ge=0.0, le=1.0,
        description=(
            "`kbloop evaluate`: least share of the questions drawn from older dataset versions, so "
            "forgetting shows even when much is new."
        ),
    )
    eval_pairwise: bool = Field(
        True, description="`kbloop evaluate`: also ask the judge which of two answers is better, in both orders."
    )
    eval_questions: str = Field(
        "questions.jsonl",
        description=(
            "`kbloop evaluate` and the daemon: your own questions, one JSON object per line "
            "({question, answer, source?, accept?}; answer NOT_IN_KB for one that must be refused), "
            "relative to the home. When the file exists, every gate run asks them too."
        ),
    )
    gate_tolerance: float = Field(
        0.02, ge=0.0, le=1.0,
        description=(
            "`kbloop evaluate`: a candidate may score this much below the baseline (0-1 scale), overall, "
            "on old knowledge and on your own questions, and still be promoted."
        ),
    )
    learn_at: str = Field(
        "02:00",
        description=(
            "`kbloop daemon`: local time (HH:MM) of the nightly learning run: dataset build, then finetune and "
            "evaluate with promotion when there are new records; empty turns it off."
        ),
    )
    learn_max_records: int = Field(
        120, ge=0,
        description=(
            "`kbloop daemon`: at most this many new records the nightly learning run trains, the newest first "
            "(corrections always), when KBLOOP_FINETUNE_MAX_RECORDS is 0; the rest wait for the next night. 120 is "
            "about an hour of training on 2 cores; 0 trains them all."
        ),
    )
    scan_interval_minutes: int = Field(
        10, ge=0, le=10080,
        description=(
            "`kbloop daemon`: minutes between full scans of the docs folder, which catch changes "
            "the file watcher missed; 0 turns them off."
        ),
    )
    debounce_seconds: float = Field(
        1.0, ge=0, le=60,
        description="`kbloop daemon`: a changed file is ingested once it has been quiet this many seconds.",
    )
    check_at: str = Field(
        "03:00",
        description="`kbloop daemon`: local time (HH:MM) of the nightly index/manifest consistency check.",
    )
    job_retries: int = Field(
        3, ge=0, le=10, description="`kbloop daemon`: times a failed job is retried before it is given up."
    )
    job_retry_seconds: float = Field(
        30.0, gt=0, le=3600,
        description="`kbloop daemon`: wait before the first retry of a failed job; each later retry waits twice as long.",
    )
    serve_host: str = Field(
        "127.0.0.1",
        description=(
            "`kbloop serve`: address to listen on. The default answers this machine only; 0.0.0.0 "
            "exposes the API to the network, so set KBLOOP_API_KEY too."
        ),
    )
    serve_port: int = Field(8765, ge=0, le=65535, description="`kbloop serve`: TCP port; 0 picks a free one.")
    api_key: str = Field(
        "",
        description=(
            "`kbloop serve`: when set, every /api and /v1 request must send `Authorization: Bearer <key>`; "
            "empty means no key."
        ),
    )

    @field_validator("embedder", "generator", "judge", "teacher")
    @classmethod
    def _model_spec(cls, value: str) -> str:
        if not MODEL_SPEC.match(value):
            raise ValueError("expected provider:name, e.g. local:qwen2.5-0.5b or ollama:qwen3:4b")
        return value

    @field_validator("learn_at")
    @classmethod
    def _optional_clock_time(cls, value: str) -> str:
        return value and cls._clock_time(value)

    @field_validator("check_at")
    @classmethod
    def _clock_time(cls, value: str) -> str:
        if not re.match(r"^([01]\d|2[0-3]):[0-5]\d$", value):
            raise ValueError("expected a 24-hour time HH:MM, such as 03:00")
        return value

    @field_validator("ray_address")
    @classmethod
    def _ray_address(cls, value: str) -> str:
        if value and not re.match(r"^(auto|[\w.-]+:\d{1,5})$", value):
            raise ValueError("expected host:port of the Ray head node, such as 127.0.0.1:6379, or auto")
        return value

    @field_validator("ollama_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("expected an http(s) URL such as http://127.0.0.1:11434")
        return value.rstrip("/")

    @field_validator("qdrant_url")
    @classmethod
    def _optional_url(cls, value: str) -> str:
        if value and not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("expected an http(s) URL such as http://127.0.0.1:6333, or empty for embedded Qdrant")
        return value.rstrip("/")

    @field_validator("qdrant_collection")
    @classmethod
    def _collection_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,63}", value):
            raise ValueError("expected up to 64 letters, digits, _ and -, such as kbloop")
        return value

    @model_validator(mode="after")
    def _one_qdrant(self) -> "Settings":
        if self.qdrant_url and self.qdrant_path:
            raise ValueError(
                "KBLOOP_QDRANT_URL and KBLOOP_QDRANT_PATH are both set: keep the URL for a Qdrant server, "
                "or the path for embedded Qdrant"
            )
        if self.qdrant_replication_factor and self.qdrant_write_consistency > self.qdrant_replication_factor:
            raise ValueError(
                f"KBLOOP_QDRANT_WRITE_CONSISTENCY ({self.qdrant_write_consistency}) must not exceed "
                f"KBLOOP_QDRANT_REPLICATION_FACTOR ({self.qdrant_replication_factor})"
            )
        return self

    @model_validator(mode="after")
    def _overlap_below_size(self) -> "Settings":
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError(
                f"KBLOOP_CHUNK_OVERLAP ({self.chunk_overlap}) must be smaller than "
                f"KBLOOP_CHUNK_SIZE ({self.chunk_size})"
            )
        return self

    @classmethod
    def env_name(cls, field: str) -> str:
        return ENV_PREFIX + field.upper()

    @classmethod
    def empty_is_a_value(cls, field: str) -> bool:
        """Whether an empty value of this setting means something of its own (its help says
        what empty does: off, none, the embedded default), rather than "use the default"."""
        return field in EMPTY_IS_A_VALUE

    @classmethod
    def from_mapping(cls, values: dict[str, str], origin: str = "settings") -> "Settings":
        """Build settings from KBLOOP_* strings; any problem becomes one clear ConfigError."""
        known = {cls.env_name(name): name for name in cls.model_fields}
        # An empty value means "unset" (the default), except where empty is itself documented
        # as a value ("empty turns it off"): there it is kept, so it can override .env.
        data = {known[key]: value for key, value in values.items()
                if key in known and (value != "" or cls.empty_is_a_value(known[key]))}
        try:
            return cls(**data)
        except ValidationError as exc:
            raise ConfigError(_describe(exc, data, origin)) from None


def _describe(exc: ValidationError, data: dict[str, str], origin: str) -> str:
    err = exc.errors()[0]
    if not err["loc"]:  # a cross-field check
        return f"bad {origin}: {err['msg'].removeprefix('Value error, ')}"
    field = str(err["loc"][0])
    info = Settings.model_fields[field]
    message = err["msg"].removeprefix("Value error, ")
    return (
        f"bad {origin}: {Settings.env_name(field)}={data.get(field)!r}: {message} "
        f"({info.description})"
    )


def render_env_template() -> str:
    """The text of .env.example and of a new home's .env: every setting, documented."""
    lines = [
        "# kbloop settings. Uncomment a line to change it; environment variables win over this file.",
        "# `kbloop init` writes this file into a new home; any KBLOOP_* variable can also be exported.",
        "",
    ]
    for name, info in Settings.model_fields.items():
        lines.append(f"# {info.description}")
        lines.append(f"# {Settings.env_name(name)}={info.default}")
        lines.append("")
    return "\n".join(lines)


def render_settings_markdown() -> str:
    """The text of docs/configuration.md: every setting as a table row, from the same source
    as .env.example, so the reference cannot drift from the code."""

    def cell(text: str) -> str:
        # Outside `code`, a <placeholder> would be read as an HTML tag; a | anywhere ends the cell.
        parts = text.split("`")
        parts[::2] = [part.replace("<", "&lt;").replace(">", "&gt;") for part in parts[::2]]
        return "`".join(parts).replace("|", "\\|")

    lines = [
        "# Configuration",
        "",
        "<!-- Generated by kbloop.config.render_settings_markdown(); edit the field descriptions in",
        "     kbloop/config.py, then regenerate this file (tests/test_config.py says how). -->",
        "",
        "Settings come from the home's `.env` (written by `kbloop init`, the same text as",
        "[`.env.example`](../.env.example)) and from `KBLOOP_*` environment variables; the environment",
        "wins. A bad value stops the command with one line that names the setting and says what it",
        "accepts. An unknown `KBLOOP_*` name in `.env` is an error too, so a typo never goes unnoticed;",
        "names are upper case, and `KBLOOP_Retrieve_K` is such a typo. An empty value (`KBLOOP_X=`)",
        "means the default, except where a setting below says what empty does: there it is a value,",
        "and `KBLOOP_LEARN_AT=` in the environment turns the nightly run off whatever `.env` says.",
        "",
        "| setting | default | what it does |",
        "| --- | --- | --- |",
    ]
    for name, info in Settings.model_fields.items():
        default = f"`{info.default}`" if info.default != "" else "(empty)"
        lines.append(f"| `{Settings.env_name(name)}` | {cell(default)} | {cell(info.description or '')} |")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Home:
    """A kb home: the folder holding .env, docs/, vector_store/ and data/."""

    root: Path

    @property
    def env_file(self) -> Path:
        return self.root / ".env"

    @property
    def vector_store_dir(self) -> Path:
        return self.root / "vector_store"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def manifest_path(self) -> Path:
        return self.data_dir / "kbloop.sqlite"

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def datasets_dir(self) -> Path:
        return self.data_dir / "datasets"

    @property
    def adapters_dir(self) -> Path:
        return self.data_dir / "adapters"

    @property
    def evals_dir(self) -> Path:
        return self.data_dir / "evals"

    def docs_dir(self, settings: Settings) -> Path:
        return self._within(settings.docs_dir)

    def qdrant_dir(self, settings: Settings) -> Path:
        """Embedded Qdrant's folder: KBLOOP_QDRANT_PATH, else vector_store/qdrant in the home."""
        return self._within(settings.qdrant_path) if settings.qdrant_path else self.vector_store_dir / "qdrant"

    def eval_questions(self, settings: Settings) -> Path | None:
        """The user's own eval questions, when the file exists."""
        path = self._within(settings.eval_questions) if settings.eval_questions else None
        return path if path and path.is_file() else None

    def _within(self, setting: str) -> Path:
        path = Path(setting).expanduser()
        return path if path.is_absolute() else self.root / path

    def is_home(self) -> bool:
        return self.env_file.is_file() or self.manifest_path.is_file()

    def load_settings(self, environ: dict[str, str] | None = None) -> Settings:
        environ = os.environ if environ is None else environ
        values: dict[str, str] = {}
        if self.env_file.is_file():
            file_values = {k: v for k, v in dotenv_values(self.env_file).items() if v is not None}
            check_known(file_values, self.env_file)
            values.update(file_values)
        values.update({k: v for k, v in environ.items() if k.startswith(ENV_PREFIX)})
        return Settings.from_mapping(values, origin=f"setting (from {self.env_file} or the environment)")


def check_known(values: dict[str, str], source: Path) -> None:
    """Every KBLOOP_* name in ``source`` must be a setting, spelled exactly as documented (upper
    case): any other is a typo that would otherwise be silently ignored."""
    known = {Settings.env_name(name) for name in Settings.model_fields} | {HOME_ENV}
    unknown = sorted(k for k in values if k.upper().startswith(ENV_PREFIX) and k not in known)
    if not unknown:
        return
    name = unknown[0]
    hint = f"; did you mean {name.upper()}?" if name.upper() in known else "; known settings are listed in .env.example"
    raise ConfigError(f"unknown setting {name} in {source}{hint}")


def find_home(explicit: str | os.PathLike | None = None, environ: dict[str, str] | None = None) -> Home:
    """The home named by --home, else $KBLOOP_HOME, else the current folder."""
    environ = os.environ if environ is None else environ
    if explicit:
        source, home = "--home", Home(Path(explicit).expanduser().resolve())
    elif environ.get(HOME_ENV):
        source, home = HOME_ENV, Home(Path(environ[HOME_ENV]).expanduser().resolve())
    else:
        source, home = "the current folder", Home(Path.cwd())
    if not home.is_home():
        raise HomeNotFound(
            f"{home.root} ({source}) is not a kbloop home: run `kbloop init {home.root}` first, "
            f"or pass --home / set {HOME_ENV}"
        )
    return home


def init_home(root: str | os.PathLike) -> Home:
    """Create (or complete) a home; never overwrites an existing .env or data."""
    home = Home(Path(root).expanduser().resolve())
    if home.root.exists() and not home.root.is_dir():
        raise ConfigError(f"{home.root} exists and is not a folder")
    for folder in (home.root / "docs", home.vector_store_dir, home.data_dir):
        folder.mkdir(parents=True, exist_ok=True)
    if not home.env_file.exists():
        # Owner-only from its first byte, never loosened later: it comes to hold KBLOOP_API_KEY.
        created = os.open(home.env_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(created, "w", encoding="utf-8") as fh:
            fh.write(render_env_template())
    return home


def set_setting(home: Home, field: str, value: str) -> None:
    """Write ``KBLOOP_<FIELD>=value`` into the home's .env and keep every other line: the line
    that sets it is replaced (later ones, which would win over it, go), else one is added at the
    end. The value, a plain word, is validated first; the file is replaced atomically and keeps
    its permissions (a new one is owner-only, as `kbloop init` makes it)."""
    name = Settings.env_name(field)
    Settings.from_mapping({name: value}, origin="value")
    try:
        lines = home.env_file.read_text(encoding="utf-8").splitlines()
        mode = stat.S_IMODE(home.env_file.stat().st_mode)
    except FileNotFoundError:
        lines, mode = [], 0o600
    sets_it = re.compile(rf"^\s*(export\s+)?{name}\s*=")
    out = [line for line in lines if not sets_it.match(line)]
    first = next((i for i, line in enumerate(lines) if sets_it.match(line)), len(out))
    out.insert(first, f"{name}={value}")
    tmp = home.env_file.with_name(f".{home.env_file.name}.{os.getpid()}.tmp")
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "w", encoding="utf-8") as fh:
        os.fchmod(fh.fileno(), mode)
        fh.write("\n".join(out) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, home.env_file)
    fsync_folder(home.root)
