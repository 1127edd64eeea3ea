#!/usr/bin/env bash
# RLKD with OpenRLHF: GRPO (group-normalised advantages) whose reward is rlkd serve's POST /get_reward.
# Run:  bash configs/openrlhf/rlkd_grpo.sh
#   It starts the reward server, rlkd serve --config configs/openrlhf/rlkd_reward.yaml --port 5000, waits for
#   GET /health, then submits openrlhf.cli.train_ppo_ray with --reward.remote_url http://127.0.0.1:5000/get_reward.
# Prerequisites: data/rlkd/train.jsonl (rlkd data rlkd --config configs/paper/data_rlkd.yaml; its 'problem' is the
#   prompt, its 'id' the label the server finds the teacher's structure by); the GSRM and judge vLLM servers of
#   configs/openrlhf/rlkd_reward.yaml; OpenRLHF 0.11 in its own environment (OPENRLHF_PYTHON) and `ray start --head`.
# Not run here: OpenRLHF pins transformers/vLLM versions that conflict with rlkd's and needs GPUs. Flag names follow
#   OpenRLHF 0.11.2; check them with `python -m openrlhf.cli.train_ppo_ray --help` of your version.
# The in-process variant needs no server: RLKD_CONFIG=configs/openrlhf/rlkd_reward.yaml and
#   --reward.remote_url $(python -c "import rlkd.integrations.openrlhf as m; print(m.__file__)")
set -euo pipefail

RLKD=${RLKD:-rlkd}                          # the rlkd command (its own environment)
OPENRLHF_PYTHON=${OPENRLHF_PYTHON:-python3}  # a Python with openrlhf installed
PORT=${PORT:-5000}

"$RLKD" serve --config configs/openrlhf/rlkd_reward.yaml --port "$PORT" &
SERVE_PID=$!
trap 'kill "$SERVE_PID"' EXIT                # SIGTERM: requests in flight are answered, then it stops
for _ in $(seq 1 120); do
  curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break
  sleep 2
done
curl -sf "http://127.0.0.1:$PORT/health" >/dev/null

ray job submit --address="http://127.0.0.1:8265" -- "$OPENRLHF_PYTHON" -m openrlhf.cli.train_ppo_ray \
  --actor.model_name_or_path runs/paper/sft \
  --actor.num_nodes 1 --actor.num_gpus_per_node 8 \
  --ref.num_nodes 1 --ref.num_gpus_per_node 8 \
  --vllm.num_engines 4 --vllm.tensor_parallel_size 2 \
  --train.colocate_all \
  --reward.remote_url "http://127.0.0.1:$PORT/get_reward" \
  --data.prompt_dataset data/rlkd/train.jsonl \
  --data.input_key problem --data.label_key id --data.apply_chat_template \
  --data.max_len 5120 \
  --rollout.n_samples_per_prompt 4 --rollout.temperature 0.7 --rollout.max_new_tokens 4096 \
  --algo.advantage.estimator group_norm \
  --algo.kl.use_loss --algo.kl.estimator k3 --algo.kl.init_coef 0.04 \
  --actor.adam.lr 5e-5 --actor.max_norm 0.2 \
  --train.batch_size 64 --train.micro_batch_size 4 --train.max_epochs 1 \
  --ds.zero_stage 3 --ds.param_dtype bf16 \
  --ckpt.output_dir runs/openrlhf/rlkd_grpo
