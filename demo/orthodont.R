# Orthodont (nlme): distance from the pituitary to the pterygomaxillary
# fissure, in mm, at ages 8, 10, 12 and 14 for 16 boys and 11 girls.
# Y is 4 ages x 27 children; A holds an intercept and a male indicator.
data(Orthodont, package = "nlme")
# Rows are sorted by child, then age, so the distances fill Y column by column.
orthodont <- as.data.frame(Orthodont)
subjects <- unique(as.character(orthodont$Subject))
Y <- matrix(orthodont$distance, nrow = 4,
            dimnames = list(paste0("age", sort(unique(orthodont$age))), subjects))
male <- as.numeric(orthodont$Sex[match(subjects, orthodont$Subject)] == "Male")
A <- rbind("(Intercept)" = 1, male = male)

fit <- nmfre(Y, A, rank = 1, df_rate = 0.21)
print(fit)

# The same model from the long-format data frame. Female is made the
# reference level because non-negative Theta cannot hold the negative
# effect that a Male reference level would give girls.
orthodont$Sex <- relevel(factor(orthodont$Sex, ordered = FALSE), "Female")
fit <- nmfre(distance ~ Sex, data = orthodont, unit = ~ Subject, occasion = ~ age,
             rank = 1, df_rate = 0.21)
print(summary(fit))
