"""OLMo-1B as the reference recipe trains it (../shared/reference: the PyTorch reproduction on one A100).

Architecture and optimizer from allenai/OLMo `configs/official-0724/OLMo-1B.yaml` ("OLMo-1B.yaml"); run length,
batch, warm-up and intervals from the recipe's command line ("recipe"). Keys mirror OLMo's TrainConfig names, so the
recipe's overrides carry over with a `--config.` prefix, e.g. `--config.scheduler.t_warmup=500`.
"""

import ml_collections

from olmo_jax.config import none_or


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.run_name = "olmo-1b"
    c.seed = 6198  # OLMo-1B.yaml: seed
    c.precision = "amp_bf16"  # OLMo-1B.yaml: precision (bf16 compute, fp32 master weights and Adam moments)
    c.max_duration = 7630  # recipe: --max_duration=7630 (steps; ~1B tokens)
    c.stop_at = none_or(int)  # OLMo: stop_at (end early without changing the LR schedule)
    c.global_train_batch_size = 64  # recipe: --global_train_batch_size=64 (64 × 2048 = 131,072 tokens/step)
    c.device_train_microbatch_size = 8  # recipe: --device_train_microbatch_size=8
    c.max_grad_norm = 1.0  # OLMo-1B.yaml: max_grad_norm
    c.softmax_auxiliary_loss = False  # OLMo-1B.yaml: z-loss off (default)
    c.save_folder = "runs/olmo-1b"  # OLMo: save_folder (the run directory)
    c.save_interval = 1000  # recipe: --save_interval=1000
    c.save_num_checkpoints_to_keep = 9  # OLMo-1B.yaml: save_num_checkpoints_to_keep
    c.load_path = none_or(str)  # OLMo: load_path (a checkpoint or an HF directory)
    c.console_log_interval = 10  # OLMo: console_log_interval
    c.tokenizer = none_or(str)  # ours: tokenizer.json / HF dir / known name; None → OLMo-1B's (olmo_jax/tokenizer.py)
    c.eval_interval = 2000  # recipe: --eval_interval=2000
    c.device_eval_batch_size = 8  # OLMo-1B.yaml: device_eval_batch_size
    # The recipe's downstream table (olmo_spec.md §8.2; metric per task: hellaswag and openbook_qa len_norm, the
    # others acc). OLMo-1B.yaml also runs piqa, rte, commitment_bank, mrpc and sst2; add them as more entries.
    # A held-out perplexity set is one more entry: dict(label="c4_en", type="perplexity", paths=("val.npy",)).
    c.evaluators = tuple(
        dict(label=task) for task in ("hellaswag", "winogrande", "sciq", "copa", "arc_easy", "openbook_qa")
    )

    c.model = ml_collections.ConfigDict()
    c.model.d_model = 2048  # OLMo-1B.yaml: d_model
    c.model.n_heads = 16  # OLMo-1B.yaml: n_heads
    c.model.n_kv_heads = none_or(int)  # OLMo default: None → n_heads (MHA)
    c.model.n_layers = 16  # OLMo-1B.yaml: n_layers
    c.model.mlp_ratio = 8  # OLMo-1B.yaml: mlp_ratio (ff_proj 16,384 wide; SwiGLU inner 8,192)
    c.model.mlp_hidden_size = none_or(int)  # OLMo default: None → mlp_ratio × d_model
    c.model.max_sequence_length = 2048  # OLMo-1B.yaml: max_sequence_length
    c.model.vocab_size = 50280  # OLMo-1B.yaml: vocab_size
    c.model.embedding_size = 50304  # OLMo-1B.yaml: embedding_size (vocab padded to a multiple of 128)
    c.model.weight_tying = True  # OLMo-1B.yaml: weight_tying
    c.model.rope_theta = 10_000.0  # OLMo default: rope_theta
    c.model.clip_qkv = none_or(float)  # OLMo-1B.yaml: clip_qkv null
    c.model.layer_norm_eps = 1e-5  # OLMo default: layer_norm_eps (non-parametric LayerNorm)
    c.model.init_fn = "mitchell"  # OLMo-1B.yaml: init_fn
    c.model.init_std = 0.02  # OLMo-1B.yaml: init_std (unused by mitchell)
    c.model.init_cutoff_factor = none_or(float)  # OLMo default: None → 3.0 for mitchell
    c.model.emb_init_std = none_or(float)  # OLMo default: None → 1/sqrt(d_model) for mitchell
    c.model.eos_token_id = 50279  # OLMo-1B.yaml: eos_token_id
    c.model.pad_token_id = 1  # OLMo-1B.yaml: pad_token_id
    c.model.attention_impl = "auto"  # ours: cuDNN flash attention on GPU, XLA elsewhere
    c.model.remat = "none"  # ours: per-block rematerialisation (none | save_matmuls | full)

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "adamw"  # OLMo-1B.yaml: optimizer.name
    c.optimizer.learning_rate = 4e-4  # OLMo-1B.yaml: optimizer.learning_rate
    c.optimizer.weight_decay = 0.1  # OLMo-1B.yaml: optimizer.weight_decay
    c.optimizer.betas = (0.9, 0.95)  # OLMo-1B.yaml: optimizer.betas
    c.optimizer.eps = 1e-5  # OLMo default: optimizer.eps
    c.optimizer.decay_norm_and_bias = False  # OLMo default
    c.optimizer.decay_embeddings = False  # OLMo default: no weight decay on the (tied) embedding

    c.scheduler = ml_collections.ConfigDict()
    c.scheduler.name = "cosine_with_warmup"  # OLMo-1B.yaml: scheduler.name
    c.scheduler.t_warmup = 500  # recipe: --scheduler.t_warmup=500
    c.scheduler.alpha_f = 0.1  # OLMo-1B.yaml: scheduler.alpha_f (decay to 0.1 × peak)
    c.scheduler.t_max = none_or(int)  # OLMo default: None → max_duration
    c.scheduler.warmup_min_lr = none_or(float)  # OLMo default: None → 0.1 × peak

    c.data = ml_collections.ConfigDict()
    c.data.paths = ("data/dolma/part-001-00000.npy",)  # recipe: --data.paths (tools/download_data.py fetches it)
    c.data.memmap_dtype = "uint16"  # OLMo default: data.memmap_dtype
    c.data.seed = none_or(int)  # OLMo default: None → seed
    c.data.prefetch_depth = 8  # ours: batches prepared ahead by a background thread
    return c
