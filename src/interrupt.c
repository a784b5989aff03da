// Lets long Rust loops notice Ctrl-C without R longjmp-ing through Rust frames.
#include <Rinternals.h>
#include <R_ext/Utils.h>

static void check_interrupt(void *unused) {
    (void) unused;
    R_CheckUserInterrupt();
}

// Returns 1 when the user has requested an interrupt, 0 otherwise.
// R_ToplevelExec catches the longjmp that R_CheckUserInterrupt would make.
int nmfre_check_interrupt(void) {
    return R_ToplevelExec(check_interrupt, NULL) == FALSE;
}
