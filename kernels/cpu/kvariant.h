/* kernels/cpu/kvariant.h — kernel variants of one source file. A file like norm.c is the scalar
 * reference; norm_avx2.c is `#define NC_KSUFFIX _avx2` + `#include "norm.c"`, compiled with the ISA
 * flags (the Makefile adds them by file name). Inside the shared source, KFN(name) is name with the
 * variant's suffix (name_base for the reference build) and NC_KPRIMARY is 1 only in the reference
 * build, which holds the entry points and the run-time dispatch. Include once per source file,
 * after the variant's NC_KSUFFIX. */
#ifndef NC_KSUFFIX
#define NC_KSUFFIX _base
#define NC_KPRIMARY 1
#endif
#ifndef NC_KVARIANT_H
#define NC_KVARIANT_H
#define NC_CAT2(a, b) a##b
#define NC_CAT(a, b) NC_CAT2(a, b)
#define KFN(name) NC_CAT(name, NC_KSUFFIX)
#endif
