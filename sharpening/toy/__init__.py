"""sharpening.toy"""
