/* The AMX tile products of the cascade's segment task (decode_attention_segment.h), included by it when the compiler
 * targets AMX-BF16 (and DA_NO_AMX is not defined: tests build that variant to check the vector products on AMX CPUs).
 * Linux hands tile data to a process only on request (arch_prctl), once; each thread configures its tiles.
 *
 * Tile layouts (all tiles 16 rows x 64 bytes):
 *   scores S[q][key] = Q [16 q x 32 dims] . KT [16 dim pairs x (16 keys x 2)], summed over head_dim / 32;
 *   out O[q][dim] = P [16 q x 32 keys] . VP [16 key pairs x (16 dims x 2)], summed over the chunk's keys.
 * A tile multiply does 16 x 16 x 32 products per instruction, where vdpbf16ps does 16 x 2.
 */
#include <sys/syscall.h>
#include <unistd.h>

#define HAVE_AMX 1
#define AMX_ARCH_GET_XCOMP_PERM 0x1022
#define AMX_ARCH_REQ_XCOMP_PERM 0x1023
#define AMX_XFEATURE_XTILEDATA 18

static int amx_permitted = 0; /* set once by amx_request_permission(); Linux grants it per process */

/* 1 when this process may use AMX tile data (asks Linux once; idempotent) */
static int amx_request_permission(void) {
    if (!amx_permitted) {
        unsigned long bits = 0;
        if (syscall(SYS_arch_prctl, AMX_ARCH_REQ_XCOMP_PERM, AMX_XFEATURE_XTILEDATA) == 0 &&
            syscall(SYS_arch_prctl, AMX_ARCH_GET_XCOMP_PERM, &bits) == 0 && (bits >> AMX_XFEATURE_XTILEDATA) & 1)
            amx_permitted = 1;
    }
    return amx_permitted;
}

typedef struct {
    uint8_t palette_id, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} amx_tilecfg;

/* every tile 16 rows x 64 bytes; the configuration is per thread */
static void amx_configure(void) {
    amx_tilecfg c;
    memset(&c, 0, sizeof c);
    c.palette_id = 1;
    for (int t = 0; t < 8; ++t) {
        c.colsb[t] = 64;
        c.rows[t] = 16;
    }
    _tile_loadconfig(&c);
}

/* s[i][key] for the 16 rows of qb against key blocks [0, nb16) of kt (layouts: decode_attention_segment.h) */
static void amx_scores(const uint16_t (*qb)[MAX_D], const uint16_t (*kt)[SEG_CH / 16][16][32], int64_t nb16,
                       int64_t KD, float (*s)[SEG_CH]) {
    for (int64_t j = 0; j < nb16; ++j) {
        _tile_zero(0);
        for (int64_t kd = 0; kd < KD; ++kd) {
            _tile_loadd(1, &qb[0][kd * 32], MAX_D * 2);
            _tile_loadd(2, kt[kd][j], 64);
            _tile_dpbf16ps(0, 1, 2);
        }
        _tile_stored(0, &s[0][j * 16], SEG_CH * 4);
    }
}

/* o[i][dim] = sum over keys [0, nk32) of p[i][key] * v[key][dim], for the 16 rows of p */
static void amx_outputs(const uint16_t (*p)[SEG_CH], const uint16_t (*vp)[SEG_CH / 2][32], int64_t nk32, int64_t D,
                        float (*o)[MAX_D]) {
    for (int64_t t = 0; t < D / 16; ++t) {
        _tile_zero(3);
        for (int64_t kb = 0; kb < nk32 / 32; ++kb) {
            _tile_loadd(4, &p[0][kb * 32], SEG_CH * 2);
            _tile_loadd(5, vp[t][kb * 16], 64);
            _tile_dpbf16ps(3, 4, 5);
        }
        _tile_stored(3, &o[0][t * 16], MAX_D * 4);
    }
}
