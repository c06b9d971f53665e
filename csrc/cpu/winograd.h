// Winograd's minimal filtering F(2x2, 5x5) (Lavin and Gray, "Fast Algorithms for Convolutional
// Neural Networks", 2016), for conv2d's 5x5 stride-1 layers: a 2x2 block of outputs from a 6x6
// block of the input, with 36 products a pair of channels where the direct sum takes 100.
//
//   U = G f G^T      a 5x5 filter f, transformed once a call (6x6, in double)
//   V = B^T d B      a 6x6 input block d, one per channel
//   M = sum over input channels of U .* V    (36 products of V's rows by U: conv2d runs them
//                                              through the convolution micro-kernel)
//   Y = A^T M A      the 2x2 outputs
//
// The weight gradient is the transpose: dL/dg = G^T [(A dy A^T) .* (B^T d B)] G for a 2x2 block
// dy of the output gradient and the 6x6 input block d under it, summed over blocks, images and
// (as 36 products) channel pairs before the one G^T . G at the end.
//
// with the interpolation points 0, 1, -1, 2, -2 and infinity. Point xi = 6*r + s of a 6x6 array
// is its row r, column s.
//
// F(4x4, 3x3), for 3x3 stride-1 layers (forward, dx and dw), works on the same 6x6 blocks with
// the same points, hence the same B^T d B: a 4x4 block of outputs with 36 products a pair of
// channels where the direct sum takes 144. Only G (6x3) and A^T (4x6) differ.
#pragma once

#include <cstdint>

namespace fastcnn {

constexpr int kWinogradPoints = 36;

// u[xi * ldu + j] = (G f_j G^T)[xi] for `count` 5x5 filters side by side: f_j's tap
// t = 5*row + column at f[t * count + j]. Computed in double.
void winograd5_filters(const float* f, int64_t count, float* u, int64_t ldu);

// V[xi * ldv + c] = (B^T d B)[xi] of channel c < C, for the 6x6 block whose top-left pixel's
// channels are at d (NHWC: a pixel's C channels side by side, rows `row` floats apart).
void winograd5_input(const float* d, int64_t row, int64_t C, float* V, int64_t ldv);

// out[q * count + e] = (A^T M A)[q] of the 6x6 array M[xi * ldm + e], for e < count and the
// four outputs q = 2*row + column. Returns false if any output is Inf or NaN.
bool winograd5_output(const float* M, int64_t ldm, int64_t count, float* out);

// The output gradient's transform A g A^T of 2x2 blocks g, for O channels: g's element (a, b)
// of channel o at g[(a * row) + b * O + o] (NHWC). D[xi * ld_xi + (o / mr) * ld_panel + o % mr],
// that is, in the GEMM's A panels of mr channels (zeros for o >= O up to whole panels).
void winograd5_dy(const float* g, int64_t row, int64_t O, int mr, float* D, int64_t ld_xi,
                  int64_t ld_panel);

// F(4x4, 3x3)'s filters G f G^T (f's 9 taps t = 3*row + column, as above) and outputs A^T M A,
// out[q * count + e] for the 16 outputs q = 4*row + column.
void winograd43_filters(const float* f, int64_t count, float* u, int64_t ldu);
bool winograd43_output(const float* M, int64_t ldm, int64_t count, float* out);

// dw[e * 25 + t] for the 25 taps t of G^T m G, m the 6x6 sums at m[xi * ld + e], for e in [0,
// count); in double. False if one of m is Inf or NaN.
bool winograd5_dw(const float* m, int64_t ld, int64_t count, float* dw);

// F(4x4, 3x3)'s weight gradient: the transform A g A^T of 4x4 blocks g of dy (as winograd5_dy's
// of 2x2 blocks), and dw's 9 taps G^T m G of the 6x6 sums m (as winograd5_dw).
void winograd43_dy(const float* g, int64_t row, int64_t O, int mr, float* D, int64_t ld_xi,
                   int64_t ld_panel);
bool winograd43_dw(const float* m, int64_t ld, int64_t count, float* dw);

// F(2x2, 3x3), for the weight gradient of 3x3 stride-1 layers whose output F(4x4, 3x3)'s blocks
// would cover with a tenth more waste (its transforms: 4x4 blocks, 16 points, interpolation
// points 0, 1, -1 and infinity): the same three steps as above.
constexpr int kWinograd3Points = 16;
void winograd3_input(const float* d, int64_t row, int64_t C, float* V, int64_t ldv);
void winograd3_dy(const float* g, int64_t row, int64_t O, int mr, float* D, int64_t ld_xi,
                  int64_t ld_panel);
bool winograd3_dw(const float* m, int64_t ld, int64_t count, float* dw);

}  // namespace fastcnn
