"""sharpening.figures"""
