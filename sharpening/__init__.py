"""sharpening: does RL on LLMs teach new skills, or only sharpen the base model's distribution?

One KL-regularized objective (sharpening.objective), its closed-form optima (sharpening.theory), toy
simulations (sharpening.toy), an LLM trainer and evaluator (sharpening.llm) and the figures
(sharpening.figures), all driven by the same reward, advantage and loss code.
"""

from sharpening.objective import Regime, rloo_advantages, shaped_reward

__version__ = "0.1.0"
__all__ = ["Regime", "shaped_reward", "rloo_advantages", "__version__"]
