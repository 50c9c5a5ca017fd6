def report(r): return ""
def plots(r, out): return []
def verdicts(r): return {}
