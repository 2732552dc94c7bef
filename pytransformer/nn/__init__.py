"""Layers with explicit forward(...) and backward(dout): no autograd anywhere."""

from .attention import MultiHeadAttention, heads, merge_heads
from .blocks import DecoderBlock, EncoderBlock, FeedForward, GatedFeedForward, Residual
from .layers import (Activation, Dropout, Embedding, LayerNorm, LearnedPositions, Linear, RMSNorm, Rotary, Scale,
                     SinusoidalPositions, SoftCap, TiedLMHead, sinusoidal_table)
from .module import FlatParameters, Module, Parameter
from .patch import PatchEmbedding, image_to_patches

__all__ = ["Activation", "DecoderBlock", "Dropout", "Embedding", "EncoderBlock", "FeedForward", "FlatParameters", "GatedFeedForward",
           "LayerNorm", "LearnedPositions", "Linear", "Module", "MultiHeadAttention", "Parameter", "PatchEmbedding",
           "RMSNorm", "Residual", "Rotary", "Scale", "SinusoidalPositions", "SoftCap", "TiedLMHead", "image_to_patches", "heads", "merge_heads",
           "sinusoidal_table"]
