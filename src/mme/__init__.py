"""mme: linear mixed models by Henderson's mixed-model equations and AI-REML."""
