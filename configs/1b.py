"""OLMo-1B as the reference recipe trains it (../shared/reference: the PyTorch reproduction on one A100).

Architecture and optimizer from allenai/OLMo `configs/official-0724/OLMo-1B.yaml` ("OLMo-1B.yaml"); run length,
batch, warm-up and intervals from the recipe's command line ("recipe"). Keys mirror OLMo's TrainConfig names, so the
recipe's overrides carry over with a `--config.` prefix, e.g. `--config.scheduler.t_warmup=500`.
"""

import ml_collections

from olmo_jax.config import none_or


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.run_name = "olmo-1b"  # name shown in logs and W&B (OLMo: run_name)
    c.seed = 6198  # seed of the init and of the data order (OLMo-1B.yaml: seed)
    # "amp_bf16": bf16 compute with fp32 master weights and Adam moments, or "fp32" (OLMo-1B.yaml: precision)
    c.precision = "amp_bf16"
    c.max_duration = 7630  # training steps; also the LR schedule's length (recipe: --max_duration=7630, ~1B tokens)
    c.stop_at = none_or(int)  # end the run at this step without changing the LR schedule (OLMo: stop_at)
    c.global_train_batch_size = 64  # sequences per optimizer step, all devices (recipe: 64 × 2048 = 131,072 tokens)
    # sequences per device per forward/backward; the rest is accumulation (recipe: 8)
    c.device_train_microbatch_size = 8
    c.max_grad_norm = 1.0  # global gradient-norm clipping threshold, OLMo's min(1, max/(norm+1e-6)) (OLMo-1B.yaml: 1.0)
    c.softmax_auxiliary_loss = False  # add OLMo's z-loss, 1e-4 · mean(logsumexp²) (OLMo-1B.yaml: off)
    # the summed cross-entropy is divided by the batch's B·(T−1) "targets", as the ai2-olmo ≤ 0.3.0 code that
    # trained OLMo-1B did, or by its B·T "tokens", as ai2-olmo ≥ 0.4.0 does (a loss (T−1)/T as large) (ours)
    c.loss_normalization = "targets"
    # the run directory: checkpoints/, metrics.jsonl, tensorboard/, train_config.json, train_data/,
    # data_ledger.jsonl (OLMo: save_folder)
    c.save_folder = "runs/olmo-1b"
    c.save_interval = 1000  # checkpoint every this many steps, and at the end (recipe: --save_interval=1000)
    c.save_num_checkpoints_to_keep = 9  # newest checkpoints kept; older ones are deleted (OLMo-1B.yaml: 9)
    # start from this checkpoint (run dir, checkpoints/ or step dir), an HF directory, or an OLMo stepN-unsharded
    # directory or URL with its full state (docs/olmo-exchange.md) (OLMo: load_path)
    c.load_path = none_or(str)
    c.reset_optimizer_state = False  # with load_path: take the weights only, with a new optimizer at step 0 (OLMo name)
    c.allow_resume_mismatch = False  # resume although the checkpoint's model config or data fingerprint differs (ours)
    # resume although the checkpoint's optimizer, LR schedule, clipping or z-loss settings differ (ours)
    c.allow_optimizer_change = False
    c.console_log_interval = 10  # steps between console lines and metrics.jsonl records (OLMo: console_log_interval)
    c.tensorboard = True  # write TensorBoard event files to <save_folder>/tensorboard (ours)
    # sequence positions whose logits exist at once in the loss; 8 × 512 × 50,304 fp32 = 824 MB (ours)
    c.loss_chunk_size = 512

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # devices on the data-parallel axis; -1: those fsdp leaves (ours)
    c.mesh.fsdp = 1  # devices parameters and optimizer state are split over; 1B fits one H200 unsharded (ours)

    c.distributed = ml_collections.ConfigDict()  # ours: multi-process runs (docs/scaling-out.md)
    # multi-process runs: None = auto (a coordinator is given, or a Slurm / Open MPI job) (ours)
    c.distributed.enabled = none_or(bool)
    c.distributed.coordinator_address = none_or(str)  # host:port of process 0 (none: cluster auto-detection)
    c.distributed.num_processes = none_or(int)  # processes in the job (with coordinator_address)
    c.distributed.process_id = none_or(int)  # this process's index, 0 … num_processes − 1
    # GPUs this process drives, e.g. (0,1,2,3,4,5,6,7) for one task per 8-GPU node
    c.distributed.local_device_ids = none_or(tuple)
    # seconds a process may go silent before the others call it lost and stop (JAX's default: 100) (ours)
    c.distributed.heartbeat_timeout_seconds = 25
    c.distributed.shutdown_timeout_seconds = 60  # seconds processes wait for each other at the end (JAX's: 300)

    c.wandb = ml_collections.ConfigDict()
    c.wandb.enabled = False  # log to Weights & Biases too (pip install wandb) (OLMo: wandb)
    c.wandb.project = "olmo_jax"  # W&B project
    c.wandb.entity = none_or(str)  # W&B team or user
    c.wandb.group = none_or(str)  # W&B run group
    c.wandb.name = none_or(str)  # W&B run name; None → run_name

    # a known name, a tokenizer.json or an HF directory; OLMo-1B.yaml names the ids-identical pii-special twin (OLMo:
    # tokenizer.identifier)
    c.tokenizer = "allenai_gpt-neox-olmo-dolma-v1_5"
    c.eval_interval = 2000  # steps between in-loop evaluations, also run at the end (recipe: --eval_interval=2000)
    c.device_eval_batch_size = 8  # sequences per evaluation forward pass (OLMo-1B.yaml: device_eval_batch_size)
    # The recipe's downstream table (docs/olmo_facts.md §8.2; metric per task: hellaswag and openbook_qa len_norm, the
    # others acc). OLMo-1B.yaml also runs piqa, rte, commitment_bank, mrpc and sst2; add them as more entries.
    # A held-out perplexity set is one more entry: dict(label="c4_en", type="perplexity", paths=("val.npy",)).
    c.evaluators = tuple(
        dict(label=task) for task in ("hellaswag", "winogrande", "sciq", "copa", "arc_easy", "openbook_qa")
    )

    c.model = ml_collections.ConfigDict()
    c.model.d_model = 2048  # hidden size (OLMo-1B.yaml)
    c.model.n_heads = 16  # attention heads; head dim = d_model / n_heads = 128 (OLMo-1B.yaml)
    c.model.n_kv_heads = none_or(int)  # key/value heads; None → n_heads, multi-head attention (OLMo default)
    c.model.n_layers = 16  # transformer blocks (OLMo-1B.yaml)
    c.model.mlp_ratio = 8  # ff_proj width / d_model: 16,384 wide, SwiGLU inner 8,192 (OLMo-1B.yaml)
    # ff_proj width (value + gate) if set; None → mlp_ratio × d_model (OLMo default)
    c.model.mlp_hidden_size = none_or(int)
    c.model.max_sequence_length = 2048  # tokens per training instance and the context length (OLMo-1B.yaml)
    c.model.vocab_size = 50280  # the tokenizer's size; token ids must be below it (OLMo-1B.yaml)
    # rows of the embedding and the logits: vocab padded to a multiple of 128 (OLMo-1B.yaml)
    c.model.embedding_size = 50304
    c.model.weight_tying = True  # the output projection is the embedding (OLMo-1B.yaml)
    c.model.rope_theta = 10_000.0  # RoPE base wavelength (OLMo default)
    c.model.clip_qkv = none_or(float)  # clamp q, k and v to ±clip_qkv; None: no clamping (OLMo-1B.yaml)
    c.model.layer_norm_eps = 1e-5  # epsilon of the non-parametric LayerNorm (OLMo default)
    # "mitchell" (1/√d, output projections depth-scaled, ±3σ), "normal" or "full_megatron" (OLMo-1B.yaml)
    c.model.init_fn = "mitchell"
    c.model.init_std = 0.02  # std of "normal" and "full_megatron" init; unused by mitchell (OLMo-1B.yaml)
    # truncation at ±factor·std; None → 3 for mitchell, none for normal (OLMo default)
    c.model.init_cutoff_factor = none_or(float)
    c.model.emb_init_std = none_or(float)  # embedding init std; None → 1/√d_model for mitchell (OLMo default)
    c.model.eos_token_id = 50279  # end-of-document id appended to every document (OLMo-1B.yaml)
    c.model.pad_token_id = 1  # padding id, used by evaluation and generation (OLMo-1B.yaml)
    # "auto": cuDNN flash attention on a GPU in bf16, XLA elsewhere; or "xla" / "cudnn" (ours)
    c.model.attention_impl = "auto"
    c.model.remat = "none"  # per-block rematerialisation: "none", "save_matmuls" or "full" (ours)

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "adamw"  # only "adamw" (OLMo-1B.yaml)
    c.optimizer.learning_rate = 4e-4  # peak learning rate (OLMo-1B.yaml)
    c.optimizer.weight_decay = 0.1  # decoupled weight decay, scaled by the current LR (OLMo-1B.yaml)
    c.optimizer.betas = (0.9, 0.95)  # Adam β1, β2 (OLMo-1B.yaml)
    c.optimizer.eps = 1e-5  # Adam epsilon, not torch's 1e-8 (OLMo default)
    c.optimizer.decay_norm_and_bias = False  # OLMo default: no weight decay on norm scales and biases
    c.optimizer.decay_embeddings = False  # OLMo default: no weight decay on the (tied) embedding

    c.scheduler = ml_collections.ConfigDict()
    c.scheduler.name = "cosine_with_warmup"  # "cosine_with_warmup", "linear_with_warmup" or "constant" (OLMo-1B.yaml)
    c.scheduler.t_warmup = 500  # warm-up steps, linear from 0.1 × peak (recipe: --scheduler.t_warmup=500)
    c.scheduler.alpha_f = 0.1  # final LR as a fraction of the peak (OLMo-1B.yaml)
    c.scheduler.t_max = none_or(int)  # schedule length in steps; None → max_duration (OLMo default)
    c.scheduler.warmup_min_lr = none_or(float)  # LR at the start of warm-up; None → 0.1 × peak (OLMo default)

    # ours, in the spirit of OLMo-core's SkipStepAdamW (docs/failure-modes.md): skip the update of a step whose loss
    # spikes, and stop the run after max_skips of them in a row, before that state is checkpointed
    c.loss_spike_guard = ml_collections.ConfigDict()
    c.loss_spike_guard.enabled = False  # off: OLMo-1B.yaml has none, and a skipped step makes a run differ from OLMo
    c.loss_spike_guard.window = 128  # steps of loss history a step's loss is judged against
    c.loss_spike_guard.sigma = 6.0  # a loss more than sigma standard deviations above the window's mean is a spike
    c.loss_spike_guard.max_skips = 3  # spiking steps in a row whose updates are skipped; one more stops the run

    c.data = ml_collections.ConfigDict()
    # token files or URLs, read in this order (recipe: --data.paths; tools/download_data.py fetches it)
    c.data.paths = ("data/dolma/part-001-00000.npy",)
    c.data.memmap_dtype = "uint16"  # dtype of the token files; "uint32" for vocabularies above 65,536 (OLMo default)
    c.data.seed = none_or(int)  # seed of the data order; None → seed (OLMo default)
    # batches prepared ahead by a background thread; remote data: depth × step time ≥ stall (ours)
    c.data.prefetch_depth = 8
    # append a content hash of each step's global batch (token ids, instance indices) to
    # <save_folder>/data_ledger.jsonl; compare runs with tools/inspect_data.py --compare-ledgers (ours)
    c.data.ledger = True
    # ours, for http(s)://, gs:// and s3:// URLs in data.paths (docs/remote-data.md):
    c.data.remote_retries = 8  # retries of a failed request (5xx, 408, 429, connection errors, timeouts)
    c.data.remote_backoff = 0.5  # seconds before the first retry, doubling each time (8 retries: ~2 min in all)
    c.data.remote_timeout = 60.0  # seconds a request may go unanswered before it is re-issued
    c.data.remote_concurrency = 64  # requests in flight at once: the 64 rows of a 1B batch in one round trip
    c.data.s3_endpoint = none_or(str)  # an S3-compatible server for s3:// URLs (MinIO, R2, ...); None: AWS
    c.data.cache_dir = none_or(str)  # keep every remote byte read on local disk here, for later epochs and restarts
    c.data.cache_chunk_mb = 1.0  # cache granularity: a row not yet cached fetches its whole chunk
    # build the quickstart corpus (data/stdlib/train.npy, heldout.npy) from the Python standard library where those
    # files are missing; only when data.paths is that file, never over a file (ours)
    c.data.stdlib_corpus = False
    return c
