"""Compact Convolutional Transformer, ported from SHI-Labs/Compact-Transformers (Apache-2.0 licence):
``src/cct.py``, ``src/utils/tokenizer.py`` and ``src/utils/transformers.py``.

``cct7_3x1_32`` is upstream's ``cct_7_3x1_32``: one 3x3 conv tokenizer, 7 pre-norm transformer blocks of
width 256 (4 heads, MLP ratio 2), a learnable positional embedding and sequence pooling; 3,760,139
parameters and 85 state-dict entries for 10 classes (zoo-reference.md). Module names follow upstream, so
the state-dict keys match its checkpoints. As upstream, ``attention_pool`` is registered before the blocks
but runs after ``classifier.norm``, and each block's ``norm1`` is registered after ``linear1`` but runs
before it. Dropout is 0 (its no-op modules are left out), attention dropout 0.1, stochastic depth 0 -> 0.1.
"""
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import StochasticDepth

from ..registry import register_model


class Tokenizer(nn.Module):
    """Conv -> ReLU -> max-pool, then the feature map's pixels become tokens: (B, C, H, W) -> (B, H*W, C)."""

    def __init__(self, in_channels: int, dim: int):
        super().__init__()
        self.conv_layers = nn.Sequential(nn.Sequential(
            nn.Conv2d(in_channels, dim, 3, stride=1, padding=1, bias=False),
            nn.ReLU(),
            nn.MaxPool2d(3, stride=2, padding=1),
        ))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    @staticmethod
    def sequence_length(image_size: int) -> int:
        side = (image_size - 1) // 2 + 1  # the 3x3 stride-1 conv keeps the size; MaxPool(3, 2, 1) halves it
        return side * side

    def forward(self, x):
        return self.conv_layers(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, attention_dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.attention_dropout = attention_dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, nh, N, hs)
        # softmax(q k^T / sqrt(hs)) v, with dropout on the attention weights, as upstream's explicit maths
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attention_dropout if self.training else 0.0)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class TransformerEncoderLayer(nn.Module):
    """Upstream's block: x += attn(LN(x)); x = norm1(x); x += MLP(x). norm1 normalises the residual stream."""

    def __init__(self, dim: int, num_heads: int, hidden: int, attention_dropout: float, drop_path: float):
        super().__init__()
        self.pre_norm = nn.LayerNorm(dim)
        self.self_attn = Attention(dim, num_heads, attention_dropout)
        self.linear1 = nn.Linear(dim, hidden)  # registered before norm1, runs after it (upstream order)
        self.norm1 = nn.LayerNorm(dim)
        self.linear2 = nn.Linear(hidden, dim)
        self.drop_path = StochasticDepth(drop_path, mode="row")

    def forward(self, x):
        x = x + self.drop_path(self.self_attn(self.pre_norm(x)))
        x = self.norm1(x)
        return x + self.drop_path(self.linear2(F.gelu(self.linear1(x))))


class TransformerClassifier(nn.Module):
    def __init__(self, num_classes: int, sequence_length: int, dim: int, depth: int, num_heads: int,
                 mlp_ratio: float, attention_dropout: float, stochastic_depth: float):
        super().__init__()
        self.attention_pool = nn.Linear(dim, 1)  # registered first, runs after the blocks (upstream order)
        self.positional_emb = nn.Parameter(torch.zeros(1, sequence_length, dim))
        drop_path = torch.linspace(0, stochastic_depth, depth).tolist()  # rises linearly over the blocks
        self.blocks = nn.ModuleList(
            TransformerEncoderLayer(dim, num_heads, int(dim * mlp_ratio), attention_dropout, p)
            for p in drop_path)
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)
        for m in self.modules():  # upstream init
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.positional_emb, std=0.2)

    def forward(self, x):  # x: (B, N, dim) tokens
        x = x + self.positional_emb
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        # sequence pooling: a softmax over the tokens weights their average
        weights = F.softmax(self.attention_pool(x), dim=1)  # (B, N, 1)
        x = (weights.transpose(1, 2) @ x).squeeze(1)  # (B, dim)
        return self.fc(x)


class CCT(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, image_size: int, dim: int = 256, depth: int = 7,
                 num_heads: int = 4, mlp_ratio: float = 2.0, attention_dropout: float = 0.1,
                 stochastic_depth: float = 0.1):
        super().__init__()
        self.tokenizer = Tokenizer(in_channels, dim)
        self.classifier = TransformerClassifier(
            num_classes, Tokenizer.sequence_length(image_size), dim, depth, num_heads, mlp_ratio,
            attention_dropout, stochastic_depth)

    def forward(self, x):
        return self.classifier(self.tokenizer(x))


@register_model
def cct7_3x1_32(*, num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    model = CCT(num_classes, in_channels, image_size, dim=256, depth=7, num_heads=4, mlp_ratio=2.0)
    model.input_shape = (in_channels, image_size, image_size)
    return model
