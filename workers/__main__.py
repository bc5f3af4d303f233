from workers.app.cli import main

main()
