// The geometry of each ISA's micro-kernels, written down once. kernel_<isa>.cpp builds its SIMD
// kernels at its geometry; kernel_generic.cpp builds portable C++ twins at every geometry
// ("generic-avx512", "generic-avx2"), so that everything around a kernel (the GEMM driver,
// packing, ragged edges, cache blocks, conv2d's in-place-B weight gradient, the convolution's
// tiles and tap-row skipping, the pooling's tails) runs in the tests on any x86-64 CPU at every
// ISA's shapes, as BLIS builds its reference kernels per configuration. Only the SIMD inner
// loops themselves then need the ISA to be tested.
#pragma once

namespace fastcnn {

struct KernelGeometry {
  int mr, nr;        // GEMM tile: MR x NR of C; packed panels of A are MR tall, of B NR wide
  int cmr, cnr;      // convolution tile: pixels x output channels (cmr <= 64)
  int kc, mc;        // cache blocks: KC deep B panels (L1), MC x KC blocks of A (L2); MC % MR == 0
  int direct_ob;     // direct forward: output channels a step
  int direct_vw;     // direct forward (unit stride): output pixels of a row a step
  int direct_dw_vw;  // direct weight gradient (unit stride): output pixels of a row a step
  int pool_vw;       // 2x2 max-pooling: outputs a step (0: no pooling kernel)
  int dw_kb;         // conv2d's in-place-B weight gradient: K block (pixels), see dw_indirect
};

// 8 x 32 GEMM tile in 16 zmm accumulators, 12 x 32 convolution tile in 24. dW's K blocks of
// 128 pixels (a 16 KB B panel): SeedNet conv2's dW 5-10% faster than 48 on Zen 4, at 1 and 2
// threads.
inline constexpr KernelGeometry kAvx512Geometry{8, 32, 12, 32, 192, 192, 8, 32, 32, 16, 128};
// 6 x 16 tiles in 12 ymm accumulators. KC 256 (a 16 KB B panel, half of L1) and MC 144: 2-6%
// faster than 192 x 192 on Zen 3 (SGEMM 2048^3, 1 and 2 threads). dW's K blocks of 104 pixels
// (a 6.5 KB B panel): 3-6% faster than 56 on Zen 3.
inline constexpr KernelGeometry kAvx2Geometry{6, 16, 6, 16, 256, 144, 6, 16, 8, 8, 104};
// The plain portable kernel, for CPUs without AVX2.
inline constexpr KernelGeometry kGenericGeometry{4, 16, 4, 16, 192, 192, 4, 8, 8, 0, 104};

static_assert(kAvx512Geometry.mc % kAvx512Geometry.mr == 0, "an A block is whole MR-row panels");
static_assert(kAvx2Geometry.mc % kAvx2Geometry.mr == 0, "an A block is whole MR-row panels");
static_assert(kGenericGeometry.mc % kGenericGeometry.mr == 0, "an A block is whole MR-row panels");

}  // namespace fastcnn
