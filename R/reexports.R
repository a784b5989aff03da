# Generics that nmfre provides methods for, re-exported so that they work
# after library(nmfre) alone.
#
# fixef(), ranef() and VarCorr() come from nlme. The generics package (0.1.3)
# has no such generics, and nlme is a recommended package that ships with
# every R installation. lme4 re-exports these same nlme generics, so one
# generic serves lme4, nlme and nmfre fits whichever package was attached
# last. Own generics of the same names would mask lme4's (or be masked by
# them), and fixef() would then fail for the other package's fits.
#
# tidy(), glance() and augment() come from generics, which is where broom
# takes them from, so broom users get nmfre's tidiers without extra steps.

#' @importFrom nlme fixef
#' @export
nlme::fixef

#' @importFrom nlme ranef
#' @export
nlme::ranef

#' @importFrom nlme VarCorr
#' @export
nlme::VarCorr

#' @importFrom generics tidy
#' @export
generics::tidy

#' @importFrom generics glance
#' @export
generics::glance

#' @importFrom generics augment
#' @export
generics::augment
