"""benchmarks.hlo on hand-written HLO whose counts are worked out by hand, and on a real module."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import hlo

# A GPU-shaped module: a Triton gemm fusion, an unfused convert, a cuBLAS gemm with its
# workspace, and a 4-step loop whose body adds (fusion), writes one row of a buffer in place
# (dynamic-update-slice fusion) and bumps the counter (an unfused add).
MODULE = """HloModule m, is_scheduled=true

%fused_add (p0: f32[8,16], p1: f32[8,16]) -> f32[8,16] {
  %p0 = f32[8,16]{1,0} parameter(0)
  %p1 = f32[8,16]{1,0} parameter(1)
  ROOT %add.1 = f32[8,16]{1,0} add(%p0, %p1)
}

%fused_dus (p0: f32[4,8,16], p1: f32[8,16], p2: s32[]) -> f32[4,8,16] {
  %p0 = f32[4,8,16]{2,1,0} parameter(0)
  %p1 = f32[8,16]{1,0} parameter(1)
  %p2 = s32[] parameter(2)
  %row = f32[1,8,16]{2,1,0} bitcast(%p1)
  %z = s32[] constant(0)
  ROOT %dus = f32[4,8,16]{2,1,0} dynamic-update-slice(%p0, %row, %p2, %z, %z)
}

%gemm_comp (p0: bf16[8,32], p1: bf16[32,16]) -> bf16[8,16] {
  %p0 = bf16[8,32]{1,0} parameter(0)
  %p1 = bf16[32,16]{1,0} parameter(1)
  ROOT %dot.1 = bf16[8,16]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%body (arg: (s32[], f32[8,16], f32[4,8,16])) -> (s32[], f32[8,16], f32[4,8,16]) {
  %arg = (s32[], f32[8,16]{1,0}, /*index=2*/f32[4,8,16]{2,1,0}) parameter(0)
  %i = s32[] get-tuple-element(%arg), index=0
  %h = f32[8,16]{1,0} get-tuple-element(%arg), index=1
  %buf = f32[4,8,16]{2,1,0} get-tuple-element(%arg), index=2
  %h2 = f32[8,16]{1,0} fusion(%h, %h), kind=kLoop, calls=%fused_add
  %buf2 = f32[4,8,16]{2,1,0} fusion(%buf, %h2, %i), kind=kLoop, calls=%fused_dus
  %one = s32[] constant(1)
  %i2 = s32[] add(%i, %one)
  ROOT %t = (s32[], f32[8,16]{1,0}, f32[4,8,16]{2,1,0}) tuple(%i2, %h2, %buf2)
}

%cond (arg: (s32[], f32[8,16], f32[4,8,16])) -> pred[] {
  %arg = (s32[], f32[8,16]{1,0}, f32[4,8,16]{2,1,0}) parameter(0)
  %i = s32[] get-tuple-element(%arg), index=0
  %n = s32[] constant(4)
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

ENTRY %main (a: bf16[8,32], b: bf16[32,16], buf: f32[4,8,16]) -> (f32[4,8,16], bf16[8,16]) {
  %a = bf16[8,32]{1,0} parameter(0)
  %b = bf16[32,16]{1,0} parameter(1)
  %buf = f32[4,8,16]{2,1,0} parameter(2)
  %g = bf16[8,16]{1,0} fusion(%a, %b), kind=kCustom, calls=%gemm_comp, backend_config={"fusion_backend_config":{"kind":"__triton_gemm"}}
  %c = f32[8,16]{1,0} convert(%g)
  %zero = s32[] constant(0)
  %init = (s32[], f32[8,16]{1,0}, f32[4,8,16]{2,1,0}) tuple(%zero, %c, %buf)
  %w = (s32[], f32[8,16]{1,0}, f32[4,8,16]{2,1,0}) while(%init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"4"}}
  %out = f32[4,8,16]{2,1,0} get-tuple-element(%w), index=2
  %cc = (bf16[8,16]{1,0}, s8[1024]{0}) custom-call(%a, %b), custom_call_target="__cublas$gemm", backend_config={"gemm_backend_config":{"dot_dimension_numbers":{"lhs_contracting_dimensions":["1"],"rhs_contracting_dimensions":["0"]}}}
  %r = bf16[8,16]{1,0} get-tuple-element(%cc), index=0
  ROOT %res = (f32[4,8,16]{2,1,0}, bf16[8,16]{1,0}) tuple(%out, %r)
}
"""

# By hand. Launches: entry gemm fusion + convert + cuBLAS = 3; body (add fusion, DUS fusion,
# counter add) x 4 = 12.
LAUNCHES = 3 + 3 * 4
# FLOPs: two [8,32]x[32,16] products, 2*8*16*32 each.
FLOPS = 2 * (2 * 8 * 16 * 32)
# Bytes: gemm fusion 8*32*2 + 32*16*2 read, 8*16*2 written = 1792; convert 256 + 512 = 768;
# cuBLAS 1792 (its s8 workspace skipped); per step: add fusion reads h twice and writes it
# (3*512 = 1536), DUS fusion reads the row (512) and the index (4), writes the row (512), not
# the 4x buffer (in place) = 1028, counter add 4+4+4 = 12.
BYTES = 1792 + 768 + 1792 + 4 * (1536 + 1028 + 12)


def test_counts_a_gpu_module_by_hand():
  a = hlo.analyze(MODULE)
  assert a.launches == LAUNCHES
  assert a.flops == FLOPS
  assert a.bytes_accessed == BYTES
  assert a.fusions == 3
  assert a.launches_of("gemm") == 2 and a.launches_of("fusion") == 8
  assert a.launches_of("other") == 1 + 4
  assert a.collective_bytes == 0 and a.unknown_trip_counts == []


def test_trip_count_read_off_the_loop_without_backend_config():
  a = hlo.analyze(MODULE.replace(', backend_config={"known_trip_count":{"n":"4"}}', ""))
  assert a.launches == LAUNCHES and a.unknown_trip_counts == []
  # from 1 to 4 inclusive (`LE`): 4 steps; starting at 2: 3 (the body's kernels once less).
  le = MODULE.replace(', backend_config={"known_trip_count":{"n":"4"}}', "").replace(
      "direction=LT", "direction=LE").replace("%zero = s32[] constant(0)",
                                              "%zero = s32[] constant(1)")
  assert hlo.analyze(le).launches == LAUNCHES
  later = MODULE.replace(', backend_config={"known_trip_count":{"n":"4"}}', "").replace(
      "%zero = s32[] constant(0)", "%zero = s32[] constant(2)")
  assert hlo.analyze(later).launches == 3 + 3 * 2


def test_unknown_trip_count_counts_body_once_and_condition_twice():
  text = MODULE.replace(', backend_config={"known_trip_count":{"n":"4"}}', "").replace(
      "%n = s32[] constant(4)", "%n = s32[] get-tuple-element(%arg), index=0")
  a = hlo.analyze(text)
  assert a.unknown_trip_counts == ["w"]
  # entry 3 + the body once (3) + the condition's compare before and after it (2)
  assert a.launches == 3 + 3 + 2


CONV = """HloModule c

ENTRY %main (x: f32[2,8,8,3], w: f32[3,3,3,16], dy: f32[2,8,8,16]) -> (f32[2,8,8,16], f32[2,8,8,3], f32[3,3,3,16], f32[1024]) {
  %x = f32[2,8,8,3]{3,2,1,0} parameter(0)
  %w = f32[3,3,3,16]{3,2,1,0} parameter(1)
  %dy = f32[2,8,8,16]{3,2,1,0} parameter(2)
  %y = f32[2,8,8,16]{3,2,1,0} convolution(%x, %w), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_01io->b01f
  %dx = (f32[2,8,8,3]{3,2,1,0}, u8[0]{0}) custom-call(%dy, %w), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_01io->b01f, custom_call_target="__cudnn$convBackwardInput"
  %dw = (f32[3,3,3,16]{3,2,1,0}, u8[0]{0}) custom-call(%x, %dy), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_01io->b01f, custom_call_target="__cudnn$convBackwardFilter"
  %flat = f32[1024]{0} bitcast(%y)
  %ar = f32[1024]{0} all-reduce(%flat), replica_groups={}, to_apply=%add
  %gx = f32[2,8,8,3]{3,2,1,0} get-tuple-element(%dx), index=0
  %gw = f32[3,3,3,16]{3,2,1,0} get-tuple-element(%dw), index=0
  ROOT %t = (f32[2,8,8,16]{3,2,1,0}, f32[2,8,8,3]{3,2,1,0}, f32[3,3,3,16]{3,2,1,0}, f32[1024]{0}) tuple(%y, %gx, %gw, %ar)
}
"""
# Forward: batch 2 x 16 output x 3 input features x the taps on real pixels: per spatial
# dimension 8 positions x 3 taps less the 2 that fall in the padding (the first position's
# left tap, the last one's right tap) = 22, so 22 x 22; both backward convolutions do the
# same products.
CONV_FLOPS = 2 * (2 * 16 * 3) * (22 * 22)


def test_convolutions_forward_and_cudnn_backward():
  a = hlo.analyze(CONV.replace("to_apply=%add", "to_apply=%main"))
  assert a.launches_of("conv") == 2 and a.launches_of("other") == 1
  assert a.flops == 3 * CONV_FLOPS
  assert a.launches_of("collective") == 1
  assert a.collective_bytes == 1024 * 4


def test_sliced_parameters_count_the_slice():
  text = """HloModule s

%fused (p0: f32[28,256], p1: s32[]) -> f32[1,256] {
  %p0 = f32[28,256]{1,0} parameter(0)
  %p1 = s32[] parameter(1)
  %z = s32[] constant(0)
  ROOT %ds = f32[1,256]{1,0} dynamic-slice(%p0, %p1, %z), dynamic_slice_sizes={1,256}
}

ENTRY %main (a: f32[28,256], i: s32[]) -> f32[1,256] {
  %a = f32[28,256]{1,0} parameter(0)
  %i = s32[] parameter(1)
  ROOT %f = f32[1,256]{1,0} fusion(%a, %i), kind=kLoop, calls=%fused
}
"""
  a = hlo.analyze(text)
  assert a.bytes_accessed == 256 * 4 + 4 + 256 * 4   # the row read, the index, the row written


def test_floor_is_max_of_compute_and_memory_per_kernel():
  a = hlo.analyze(MODULE)
  slow_memory = hlo.floor_seconds(a, {"bf16": 1e18}, 1e3)
  assert slow_memory["floor_s"] == pytest.approx(BYTES / 1e3)
  assert slow_memory["memory_bound_share"] == pytest.approx(1.0)
  slow_math = hlo.floor_seconds(a, {"bf16": 1.0}, 1e18)
  # The two gemms at 1 FLOP/s; the other kernels at (almost) no time.
  assert slow_math["floor_s"] == pytest.approx(FLOPS, rel=1e-9)
  assert slow_math["memory_bound_share"] == pytest.approx(0.0, abs=1e-9)


def test_shapes_bytes_and_tuples():
  assert hlo.shape_bytes("bf16[28,256,256]{2,1,0}") == 28 * 256 * 256 * 2
  assert hlo.shape_bytes("(s32[], f32[2,3]{1,0}, /*index=2*/pred[4])") == 4 + 24 + 4
  assert hlo.shape_bytes("bf16[128,1024]{1,0:T(8,128)(2,1)}") == 128 * 1024 * 2
  with pytest.raises(ValueError):
    hlo.analyze("HloModule empty\n")


def test_a_real_compiled_scan():
  """XLA's own text of a 5-step scan of [4,16]x[16,16] products: the loop is found and run
  5 times, the FLOPs are the products'."""
  def f(h, ws):
    return jax.lax.scan(lambda c, w: (jnp.tanh(c @ w), None), h, ws)[0]

  text = jax.jit(f).lower(jnp.zeros((4, 16)), jnp.zeros((5, 16, 16))).compile().as_text()
  a = hlo.analyze(text)
  assert a.unknown_trip_counts == []
  assert a.flops == 5 * 2 * 4 * 16 * 16
  # the same program unrolled has the same FLOPs and no loop
  g = lambda h, ws: jax.lax.scan(lambda c, w: (jnp.tanh(c @ w), None), h, ws, unroll=5)[0]
  b = hlo.analyze(jax.jit(g).lower(jnp.zeros((4, 16)), jnp.zeros((5, 16, 16))).compile()
                  .as_text())
  assert b.flops == a.flops
  np.testing.assert_equal(b.unknown_trip_counts, [])


def test_pallas_kernels_count_their_declared_flops():
  text = r"""HloModule p

ENTRY %main (a: bf16[2,28,256,768]) -> bf16[2,28,256,256] {
  %a = bf16[2,28,256,768]{3,2,1,0} parameter(0)
  ROOT %pallas_call.1 = bf16[2,28,256,256]{3,2,1,0} custom-call(%a), custom_call_target="__gpu$xla.gpu.triton", api_version=API_VERSION_TYPED_FFI, backend_config={debug = false, grid_x = 2 : i32, name = "bigru_forward", serialized_metadata = "{\22flops\22: \225637144576\22}"}
}
"""
  a = hlo.analyze(text)
  assert a.launches_of("pallas") == 1 and a.launches == 1
  assert a.flops == 5637144576
  assert a.bytes_accessed == 2 * 28 * 256 * (768 + 256) * 2


def test_loops_counted_once_on_request():
  a = hlo.analyze(MODULE, expand_loops=False)
  assert a.launches == 3 + 3 and a.flops == FLOPS


def test_tpu_batched_matmul_as_dilated_convolution():
  """TPU writes a matmul batched over 2 as a convolution of window 2 over a base dilated by 2:
  one real tap per output position, so the products of the matmul: 2 · 2·256·256 · 768."""
  text = """HloModule t

ENTRY %main (a: bf16[2,256,768], w: bf16[2,768,256]) -> bf16[2,256,256] {
  %a = bf16[2,256,768]{2,1,0} parameter(0)
  %w = bf16[2,768,256]{2,1,0} parameter(1)
  ROOT %c = bf16[2,256,256]{2,1,0} convolution(%a, %w), window={size=2 lhs_dilate=2}, dim_labels=0bf_0io->0bf
}
"""
  assert hlo.analyze(text).flops == 2 * (2 * 256 * 256) * 768
  assert hlo.parse_window("{size=3x3 stride=2x2 pad=0_1x1_1 lhs_dilate=2x1}") == {
      "size": [3, 3], "stride": [2, 2], "pad": [(0, 1), (1, 1)], "lhs_dilate": [2, 1]}


def test_pooling_fusions_are_their_own_kind():
  text = """HloModule p

%pool (p0: bf16[8,32,32,16]) -> bf16[8,16,16,16] {
  %p0 = bf16[8,32,32,16]{3,2,1,0} parameter(0)
  %init = bf16[] constant(-inf)
  ROOT %rw = bf16[8,16,16,16]{3,2,1,0} reduce-window(%p0, %init), window={size=1x2x2x1 stride=1x2x2x1}, to_apply=%max
}

ENTRY %main (x: bf16[8,32,32,16]) -> bf16[8,16,16,16] {
  %x = bf16[8,32,32,16]{3,2,1,0} parameter(0)
  ROOT %f = bf16[8,16,16,16]{3,2,1,0} fusion(%x), kind=kLoop, calls=%pool
}
"""
  a = hlo.analyze(text)
  assert a.launches_of("pool") == 1
  # the window reads all of its input: 4 x the output
  assert a.bytes_accessed == 8 * 32 * 32 * 16 * 2 + 8 * 16 * 16 * 16 * 2
  assert hlo.floor_by_kind(a, {}, 1.0) == {"pool": a.bytes_accessed}


def test_tpu_async_slices_and_copies_count_once_at_their_start():
  text = """HloModule a

ENTRY %main (p: s16[2,512,512], w: bf16[1024]) -> (s16[1,512,512], bf16[1024]) {
  %p = s16[2,512,512]{2,1,0} parameter(0)
  %w = bf16[1024]{0} parameter(1)
  %ss = ((s16[2,512,512]{2,1,0}), s16[1,512,512]{2,1,0:S(1)}, s32[]{:S(2)}) slice-start(%p), slice={[0:1], [0:512], [0:512]}
  %sd = s16[1,512,512]{2,1,0:S(1)} slice-done(%ss)
  %cs = (bf16[1024]{0:S(1)}, bf16[1024]{0}, u32[]{:S(2)}) copy-start(%w), cross_program_prefetch_index=0
  %cd = bf16[1024]{0:S(1)} copy-done(%cs)
  ROOT %t = (s16[1,512,512]{2,1,0}, bf16[1024]{0}) tuple(%sd, %cd)
}
"""
  a = hlo.analyze(text)
  assert a.launches == 2 and a.launches_of("copy") == 1 and a.launches_of("other") == 1
  assert a.bytes_accessed == 2 * 512 * 512 * 2 + 2 * 1024 * 2
