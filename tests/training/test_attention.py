"""The training and scoring entry points leave cuDNN's fused attention out of sdpa's choices
(measured on an H100: it builds a plan for every new row shape; tasks/training/fastpath/attention.py)."""

import torch

from tasks.evaluation.evaluate import evaluate_adapter
from tasks.evaluation.predict import score_newest_day
from tasks.training.encoder import train_encoder_adapter
from tasks.training.fastpath.attention import sdpa_without_cudnn
from tasks.training.train import train_lora_adapter


def test_cudnn_attention_is_off_inside_and_restored_after():
    assert torch.backends.cuda.cudnn_sdp_enabled()
    inside = sdpa_without_cudnn(lambda: (torch.backends.cuda.cudnn_sdp_enabled(), torch.backends.cuda.flash_sdp_enabled(),
                                         torch.backends.cuda.mem_efficient_sdp_enabled(), torch.backends.cuda.math_sdp_enabled()))()
    assert inside == (False, True, True, True)
    assert torch.backends.cuda.cudnn_sdp_enabled()


def test_training_and_scoring_run_under_it():
    for fn in (train_lora_adapter, train_encoder_adapter, evaluate_adapter, score_newest_day):
        assert fn.__wrapped__.__name__ == fn.__name__  # functools.wraps of sdpa_without_cudnn's wrapper
        assert fn.__code__ is sdpa_without_cudnn(lambda: None).__code__
