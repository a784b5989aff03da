library(testthat)
library(nmfre)

test_check("nmfre")
