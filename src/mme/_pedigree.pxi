# Pedigree kernels (inbreeding by Meuwissen & Luo 1992, A^-1 by Henderson's rules
# with Quaas' correction), included into _core.pyx. Array-only, nogil loops.
