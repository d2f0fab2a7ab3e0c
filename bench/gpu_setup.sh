# Sourced by the bench/*_gpu.sh scripts on the device: the wheels its image lacks (var/gpu/wheels, pydantic and
# friends) and the bundled MiniLM as fp32 at /tmp/m32 (carried as fp16 in var/gpu/minilm-fp16 to stay under the
# 64 MiB carry limit). See bench/sweep_encoder_gpu.sh for how var/gpu is prepared.
python -c "import pydantic_settings" 2> /dev/null || python -m pip install --no-deps -q var/gpu/wheels/*.whl > /dev/null 2>&1 || true
[ -f /tmp/m32/config.json ] || python -c "import torch; from transformers import AutoModel, AutoTokenizer as T; d = 'var/gpu/minilm-fp16'; \
AutoModel.from_pretrained(d, dtype=torch.float32).save_pretrained('/tmp/m32'); T.from_pretrained(d).save_pretrained('/tmp/m32')" > /dev/null 2>&1
export HF_HUB_OFFLINE=1
