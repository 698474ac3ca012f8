from a2d.cli import main

main()
