"""SSAST's masked patch modelling: which patches to mask, the two losses, and the model that computes them.

Self-supervised pretraining of an AST encoder as in SSAST (Gong, Lai, Chung and Glass, "SSAST:
Self-Supervised Audio Spectrogram Transformer", AAAI 2022; github.com/YuanGongND/ssast,
src/models/ast_models.py, ``mpc`` and ``mpg``): cut the fbank into 16x16 patches without overlap,
replace the embeddings of a share of them by one learned mask embedding, run the encoder, and from
each masked position's output

- the generative head (``decoder``) reconstructs the patch (MSE against its 256 normalised fbank values);
- the discriminative head (``projector``) picks the patch out among all masked patches of the same
  clip (InfoNCE over dot products with their fbank values).

loss = InfoNCE + lambda * MSE. Where this differs from the SSAST code is listed in docs/pretraining.md.
Besides torch and transformers it imports only the classifier module (lib.model.classifier).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import ASTConfig, ASTModel
from transformers.models.audio_spectrogram_transformer.modeling_audio_spectrogram_transformer import (
    ASTPreTrainedModel,
)
from transformers.utils import ModelOutput

from lib.model.classifier import SPECIAL_TOKENS

CLUSTER_SIZES = (3, 4, 5)  # SSAST gen_maskid_patch: a square of randrange(3) + 3 patches a side
# Columns of MaskedPatchOutput.clip_stats, summed over clips (and batches) before they are divided.
STATS = ("nce_sum", "nce_patches", "correct", "squared_error_sum", "mse_patches")


# --- which patches may be masked, and which are -----------------------------------------------------------

def maskable_patches(content_frames: torch.Tensor, grid: tuple[int, int], time_stride: int) -> torch.Tensor:
    """(clips, patches) bool: the patches holding at least one frame of audio.

    Patch tokens are frequency-major (token f * T + t is frequency row f, time column t, as
    ASTPatchEmbeddings flattens its conv output); column t starts at frame t * time_stride, so it
    lies wholly in the zero-padding of a clip with `content_frames` frames of audio when
    t * time_stride >= content_frames.
    """
    frequency, time = grid
    starts = torch.arange(time, device=content_frames.device) * time_stride
    columns = starts[None, :] < content_frames[:, None]  # (clips, time)
    return columns[:, None, :].expand(-1, frequency, -1).reshape(len(content_frames), frequency * time)


def masked_counts(maskable: torch.Tensor, ratio: float) -> torch.Tensor:
    """Patches to mask per clip: round(ratio x its maskable patches), at least one where it has any."""
    available = maskable.sum(dim=1)
    return torch.minimum(torch.clamp(torch.round(available * ratio).long(), min=1), available)


def random_masks(
    maskable: torch.Tensor, counts: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Exactly counts[i] of clip i's maskable patches, drawn uniformly without replacement (SSAST gen_maskid_frame)."""
    scores = torch.rand(maskable.shape, generator=generator)
    scores[~maskable.cpu()] = 2.0  # after every drawn score: ranked last, never among the first counts[i]
    ranks = scores.argsort(dim=1).argsort(dim=1)
    return (ranks < counts.cpu()[:, None]).to(maskable.device)


def cluster_masks(
    maskable: torch.Tensor, counts: torch.Tensor, grid: tuple[int, int], generator: torch.Generator | None = None
) -> torch.Tensor:
    """Exactly counts[i] maskable patches of clip i, in squares of 3x3 to 5x5 neighbours (SSAST gen_maskid_patch).

    Each square starts at a maskable patch not masked yet (so every draw adds one) and is clipped
    to the grid; the square that would pass the count adds a random subset of its new patches.
    """
    frequency, time = grid
    allowed = maskable.cpu().reshape(-1, frequency, time)
    masks = torch.zeros_like(allowed)
    for clip, need in enumerate(counts.tolist()):
        mask = masks[clip]
        while (have := int(mask.sum())) < need:
            free = (allowed[clip] & ~mask).flatten().nonzero().flatten()
            start = int(free[torch.randint(len(free), (1,), generator=generator)])
            side = CLUSTER_SIZES[int(torch.randint(len(CLUSTER_SIZES), (1,), generator=generator))]
            row, column = divmod(start, time)
            square = torch.zeros_like(mask)
            square[row : row + side, column : column + side] = True
            new = (square & allowed[clip] & ~mask).flatten().nonzero().flatten()
            if len(new) > need - have:
                new = new[torch.randperm(len(new), generator=generator)[: need - have]]
            mask.view(-1)[new] = True
    return masks.reshape(len(counts), -1).to(maskable.device)


def masked_positions(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(index, valid), both (clips, K) with K the largest count: clip i's masked patch indices in order,
    padded with arbitrary indices where valid is False."""
    counts = mask.sum(dim=1)
    order = torch.sort((~mask).to(torch.uint8), dim=1, stable=True).indices  # masked patches first, in order
    width = int(counts.max()) if len(counts) else 0
    return order[:, :width], torch.arange(width, device=mask.device)[None, :] < counts[:, None]


def patch_values(input_values: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(clips, patches, patch_size**2): each non-overlapping patch's fbank values, in the token order of
    ASTPatchEmbeddings at stride patch_size (SSAST: nn.Unfold over the (frequency, time) image)."""
    image = input_values.transpose(1, 2).unsqueeze(1)  # (clips, 1, frequency, time), as ASTPatchEmbeddings
    return nn.functional.unfold(image, kernel_size=patch_size, stride=patch_size).transpose(1, 2)


# --- the two losses ----------------------------------------------------------------------------------------

def info_nce(predictions: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per clip: (sum of -log p(own patch), patches scored, patches whose prediction picks its own patch).

    predictions and targets are (clips, K, D), valid (clips, K). For masked patch i of a clip, the
    scores are the dot products of its prediction with the targets of all that clip's masked patches;
    the loss is the cross-entropy of picking target i (SSAST paper, eq. 1). A clip with a single
    masked patch has nothing to tell it from, and is not scored.
    """
    scores = predictions.float() @ targets.float().transpose(1, 2)  # (clips, K predictions, K targets)
    scores = scores.masked_fill(~valid[:, None, :], torch.finfo(scores.dtype).min)
    own = torch.arange(scores.shape[1], device=scores.device)
    nll = torch.logsumexp(scores, dim=2) - scores.diagonal(dim1=1, dim2=2)
    scored = valid & (valid.sum(dim=1, keepdim=True) > 1)
    correct = (scores.argmax(dim=2) == own[None, :]) & scored
    return (nll * scored).sum(dim=1), scored.sum(dim=1), correct.sum(dim=1)


def squared_error(predictions: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per clip: (sum over its masked patches of the mean squared error over the patch's values, patches)."""
    per_patch = (predictions.float() - targets.float()).pow(2).mean(dim=2)
    return (per_patch * valid).sum(dim=1), valid.sum(dim=1)


def summarise(stats: torch.Tensor, generative_weight: float) -> dict[str, float | None]:
    """Pooled over every masked patch the stats (columns STATS, summed) cover: nce, mse, total, accuracy.

    A figure no patch was scored for is None, "not measured" (never 0, which would read as a perfect
    loss or a zero accuracy, nor NaN, which JSON cannot hold): nce and accuracy when no clip had 2
    masked patches (e.g. validation clips all too short), and total with them."""
    nce_sum, nce_patches, correct, error_sum, mse_patches = (float(value) for value in stats)
    nce = nce_sum / nce_patches if nce_patches else None
    mse = error_sum / mse_patches if mse_patches else None
    total = None if nce is None or mse is None else nce + generative_weight * mse
    return {"nce": nce, "mse": mse, "total": total, "accuracy": correct / nce_patches if nce_patches else None}


# --- the model ---------------------------------------------------------------------------------------------

@dataclass
class MaskedPatchOutput(ModelOutput):
    """The batch's loss, and per clip the sums (columns STATS) that pool into exact epoch figures."""

    loss: torch.Tensor | None = None
    clip_stats: torch.Tensor | None = None


def prediction_head(hidden_size: int, outputs: int) -> nn.Sequential:
    """SSAST's cpredlayer / gpredlayer: Linear(hidden, hidden), ReLU, Linear(hidden, 256)."""
    return nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.ReLU(), nn.Linear(hidden_size, outputs))


class MaskedPatchModel(ASTPreTrainedModel):
    """An ASTModel (``encoder``) with SSAST's two heads (``projector``, ``decoder``) and mask embedding.

    Its state dict is the SSL checkpoint layout lib.model.checkpoint loads: ``encoder.*`` beside
    ``projector.*``, ``decoder.*`` and ``mask_embedding``, which a fine-tune drops. The config's
    strides must equal its patch size (non-overlapping patches, as SSAST pretrains).
    """

    base_model_prefix = "encoder"
    # forward returns a mean loss; Trainer must divide it by gradient_accumulation_steps (as lib.model.classifier)
    accepts_loss_kwargs = False

    def __init__(
        self, config: ASTConfig, mask_ratio: float = 400 / 512, masking: str = "random",
        generative_weight: float = 10.0, eval_seed: int = 0,
    ):
        super().__init__(config)
        if not config.frequency_stride == config.time_stride == config.patch_size:
            raise ValueError(
                f"masked patch pretraining needs non-overlapping patches: frequency_stride and time_stride must be "
                f"patch_size ({config.patch_size}), got {config.frequency_stride} and {config.time_stride}"
            )
        if masking not in ("random", "cluster"):
            raise ValueError(f"masking must be 'random' or 'cluster', got {masking!r}")
        self.encoder = ASTModel(config)
        patch_values_size = config.patch_size**2
        self.projector = prediction_head(config.hidden_size, patch_values_size)
        self.decoder = prediction_head(config.hidden_size, patch_values_size)
        self.mask_embedding = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.mask_ratio, self.masking, self.generative_weight = mask_ratio, masking, generative_weight
        self.eval_seed = eval_seed
        self.eval_generator = torch.Generator().manual_seed(eval_seed)
        self.post_init()
        with torch.no_grad():
            # SSAST: xavier-normal mask embedding; timm's trunc_normal(std=.02) positions and tokens. transformers
            # zero-initialises the positions, which leaves every mask token alike until they learn apart.
            nn.init.xavier_normal_(self.mask_embedding)
            embeddings = self.encoder.embeddings
            for parameter in (embeddings.position_embeddings, embeddings.cls_token, embeddings.distillation_token):
                nn.init.trunc_normal_(parameter, std=0.02)

    def save_pretrained(self, *args, save_original_format: bool = False, **kwargs):
        # As lib.model.classifier: keep transformers 5 names (Trainer reloads its checkpoints without renaming them).
        return super().save_pretrained(*args, save_original_format=save_original_format, **kwargs)

    @property
    def grid(self) -> tuple[int, int]:
        return self.encoder.embeddings.get_shape(self.config)

    def reset_eval_masks(self) -> None:
        """Evaluation masks restart from eval_seed: every evaluation masks each clip the same way."""
        self.eval_generator = torch.Generator().manual_seed(self.eval_seed)

    def sample_masks(self, content_frames: torch.Tensor) -> torch.Tensor:
        """(clips, patches) bool. Training draws from torch's global generator (Trainer saves and restores
        its state with each checkpoint, so a resumed run draws the same masks); evaluation from eval_generator."""
        generator = None if self.training else self.eval_generator
        maskable = maskable_patches(content_frames, self.grid, self.config.time_stride)
        counts = masked_counts(maskable, self.mask_ratio)
        if self.masking == "cluster":
            return cluster_masks(maskable, counts, self.grid, generator)
        return random_masks(maskable, counts, generator)

    def encode(self, patch_tokens: torch.Tensor) -> torch.Tensor:
        """ASTModel.forward from the patch embeddings on: cls/dist tokens, positions, dropout, layers, layernorm.

        Written out because ASTModel.forward takes no embeddings, and SSAST replaces the masked
        patches' embeddings before the positions are added (tests check it equals ASTModel.forward).
        """
        embeddings = self.encoder.embeddings
        batch = patch_tokens.shape[0]
        hidden = torch.cat(
            (
                embeddings.cls_token.expand(batch, -1, -1),
                embeddings.distillation_token.expand(batch, -1, -1),
                patch_tokens,
            ),
            dim=1,
        )
        hidden = embeddings.dropout(hidden + embeddings.position_embeddings)
        for layer in self.encoder.layers:
            hidden = layer(hidden)
        return self.encoder.layernorm(hidden)

    def forward(
        self,
        input_values: torch.Tensor,
        content_frames: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        return_loss: bool = True,
        mask: torch.Tensor | None = None,
        **kwargs,
    ) -> MaskedPatchOutput:
        """input_values (clips, frames, mel bins); content_frames (clips,) frames of audio before the padding
        (None: all); labels are the scan's pseudo-class, unused (Trainer's evaluation loop wants them to call
        compute_metrics); mask (clips, patches) replaces the sampled one (tests)."""
        if content_frames is None:
            content_frames = torch.full((len(input_values),), input_values.shape[1], device=input_values.device)
        if mask is None:
            mask = self.sample_masks(content_frames)
        tokens = self.encoder.embeddings.patch_embeddings(input_values)
        tokens = torch.where(mask[..., None], self.mask_embedding.to(tokens.dtype), tokens)
        hidden = self.encode(tokens)[:, SPECIAL_TOKENS:]
        index, valid = masked_positions(mask)
        states = hidden.gather(1, index[..., None].expand(-1, -1, hidden.shape[-1]))
        targets = patch_values(input_values, self.config.patch_size)
        targets = targets.gather(1, index[..., None].expand(-1, -1, targets.shape[-1])).detach()
        projected, decoded = self.projector(states), self.decoder(states)
        with torch.autocast(input_values.device.type, enabled=False):  # the losses in float32 under mixed precision
            nce_sum, nce_patches, correct = info_nce(projected, targets, valid)
            error_sum, mse_patches = squared_error(decoded, targets, valid)
        columns = (nce_sum, nce_patches, correct, error_sum, mse_patches)
        stats = torch.stack([column.float() for column in columns], dim=1)
        nce = nce_sum.sum() / nce_patches.sum().clamp(min=1)
        mse = error_sum.sum() / mse_patches.sum().clamp(min=1)
        return MaskedPatchOutput(loss=nce + self.generative_weight * mse, clip_stats=stats.detach())
