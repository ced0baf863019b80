import platform
print("python", platform.python_version())
