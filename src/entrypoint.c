// Registers the routines that the Rust bridge exports with R.
void R_init_nmfre_extendr(void *dll);

void R_init_nmfre(void *dll) {
    R_init_nmfre_extendr(dll);
}
