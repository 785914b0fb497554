"""sharpening.llm"""
