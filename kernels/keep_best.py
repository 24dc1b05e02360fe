"""The batched-restart reduction: one program per example, so the decision (read of
best_loss) and its update cannot race with other programs of the same example."""

import triton
import triton.language as tl

# Two block sizes only (each a compiled variant per dtype): short examples loop over 128.
BLOCK_SIZE = 1024
SMALL_BLOCK_SIZE = 128


@triton.jit
def _keep_best_kernel(best_x_ptr, best_loss_ptr, x_ptr, loss_ptr, example_size,
                      BLOCK: tl.constexpr):
    example = tl.program_id(0).to(tl.int64)
    loss = tl.load(loss_ptr + example).to(tl.float32)
    best = tl.load(best_loss_ptr + example).to(tl.float32)
    if loss > best:  # strict: ties keep the earlier candidate, NaN never wins
        base = example * example_size
        for start in range(0, example_size, BLOCK):
            offsets = start + tl.arange(0, BLOCK)
            mask = offsets < example_size
            tl.store(best_x_ptr + base + offsets, tl.load(x_ptr + base + offsets, mask=mask),
                     mask=mask)
        tl.store(best_loss_ptr + example, loss.to(best_loss_ptr.dtype.element_ty))


def keep_best(best_x, best_loss, x, loss, example_size):
    examples = best_loss.numel()
    if examples == 0:
        return
    if best_x.numel() == 0:  # empty examples ([B, 0]): the losses update, nothing is copied
        example_size = 0
    _keep_best_kernel[(examples,)](
        best_x, best_loss, x, loss, example_size,
        BLOCK=BLOCK_SIZE if example_size >= BLOCK_SIZE else SMALL_BLOCK_SIZE,
    )
