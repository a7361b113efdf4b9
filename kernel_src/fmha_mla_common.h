/* fmha_mla_common.h: what the two MLA decode kernels share (fmha_mla_decode.hip: mma.sync;
   fmha_mla_wgmma.hip: Hopper wgmma):
     element types elem_<FMHA_DTYPE> (Stored: the cache's storage type; Mma: the output's 16-bit
       type and its float-pair pack, bf16 for fp8, which the mma kernel also computes in),
   (TileList and finish_row, which the forward tensor-core kernels use too, are in fmha_tc_common.h).
   Needs fmha_port.h, fmha_params.h, fmha_fwd_common.h and fmha_mma_sync.h first. */
#ifndef FMHA_MLA_COMMON_H
#define FMHA_MLA_COMMON_H

namespace fmha {

template <class T, int N>
struct alignas(sizeof(T) * N) Vec { T v[N]; };

struct elem_fp16 { typedef unsigned short Stored; typedef mma_fp16 Mma; };
struct elem_bf16 { typedef unsigned short Stored; typedef mma_bf16 Mma; };
/* fp8 Q and cache are widened in shared memory (exact: every e4m3fn value is a bf16 and an fp16 value). */
struct elem_fp8_e4m3fn { typedef unsigned char Stored; typedef mma_bf16 Mma; };

}  // namespace fmha

#endif /* FMHA_MLA_COMMON_H */
